#!/usr/bin/env bash
# One timed training run with peak memory: builds edgeseg in release, runs
# `edgeseg train` with the arguments given under GNU time, then prints the
# run's best validation mIoU, wall time and peak RSS on one line.
#   bench/train-run.sh RUN_DIR [edgeseg train flags...]
# Synthetic, under 10 minutes (the training issue's goal):
#   bench/train-run.sh target/bench/synth --model linknet18 --width 0.5 --size 256x192 --time-limit 9.5 --epochs 100
# CamVid, 45-minute budget:
#   bench/train-run.sh target/bench/camvid --data ../shared/datasets/camvid --time-limit 45 --epochs 1000 ...
set -euo pipefail
cd "$(dirname "$0")/.."
run=$1
shift
if [[ " $* " == *" --data "* ]]; then
    data=$(sed -E 's/.*--data ([^ ]+).*/\1/' <<<"$*")
    if [ ! -d "$data" ]; then
        echo "skipping: dataset $data is absent" >&2
        exit 0
    fi
fi
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }
cargo build -q --release -p host --bin edgeseg
rm -rf "$run"
mkdir -p "$(dirname "$run")"
log=$run.time.txt
start=$(date +%s)
/usr/bin/time -v -o "$log" target/release/edgeseg -q train --out "$run" "$@" | tee "$run.log"
end=$(date +%s)
rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
miou=$(python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(f\"{s['best_miou']:.4f} at epoch {s['best_epoch']} of {s['epochs_done']}\")" "$run/state.json")
echo "RESULT best val mIoU $miou; wall $((end - start)) s; peak RSS $((rss_kb / 1024)) MiB; $(nproc) cores; args: $*"
