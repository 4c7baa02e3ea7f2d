#!/usr/bin/env bash
# The on-board runtime on this machine: bare Segmenter against the full
# pipeline (capture, inference and output threads) on the same 640x480 I420
# frames, preprocessing + postprocessing time, steady-state RSS, and the cost
# of the live view with 10 connected clients.
#   bench/runtime.sh MODEL.onnx [FRAMES]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?model}
frames=${2:-60}
cargo build -q --release -p firmware --bin edgeseg-run --example bench_segmenter
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }
mkdir -p target/bench
raw=target/bench/frames-640x480.yuv
target/release/examples/bench_segmenter "$model" "$frames" 640x480 "$raw"
run() {
    /usr/bin/time -f "peak RSS %M KiB" target/release/edgeseg-run --model "$model" \
        --source stdin:yuv420:640x480 --queue 1000 --report-every 0 "$@" <"$raw" 2>&1 >/dev/null |
        grep -E "FPS|peak RSS" | tr '\n' ' '
    echo
}
echo "pipeline, no sink:      $(run)"
echo "pipeline, jsonl sink:   $(run --sink jsonl:/dev/null)"
port=$((20000 + RANDOM % 20000))
(
    sleep 1
    for _ in $(seq 10); do
        timeout 60 curl -s -o /dev/null "http://127.0.0.1:$port/stream" &
    done
    wait
) &
clients=$!
echo "pipeline, live view + 10 clients: $(run --sink "http:127.0.0.1:$port")"
kill "$clients" 2>/dev/null || true
