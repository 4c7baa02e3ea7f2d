#!/usr/bin/env bash
# Inference side by side: onnxruntime (Python, outside the repository) against
# edgeseg's engine (tract with edgeseg's own convolution operators) and plain
# tract (`--no-winograd --no-own-ops`), on
# the demo's model at its training size and exported at 512x256: float, int8,
# and f16 where the CPU has half-precision arithmetic; 1 thread and all cores;
# median of FRAMES frames after warm-up. Then the per-node profile of the
# slowest nodes. Run nothing else meanwhile.
#   bench/inference.sh [DEMO_OUT]   (default demo-out, from `edgeseg demo`)
#   FRAMES=30 TOP=12
set -euo pipefail
cd "$(dirname "$0")/.."
demo=${1:-demo-out}
frames=${FRAMES:-30}
top=${TOP:-12}
for f in "$demo/model.onnx" "$demo/model.int8.onnx" "$demo/run/config.json"; do
    [ -e "$f" ] || { echo "$f is missing: run \`edgeseg demo --out $demo\` first" >&2; exit 1; }
done
# edgeseg only exports and quantises here: the test build's binary (the same
# features as `cargo test --workspace`, so no second build of Burn and tract).
cargo test -q --workspace --no-run
cargo build -q --release -p firmware --example profile_onnx --bin edgeseg-run
python=$(bash bench/setup-python.sh --no-torch)
edgeseg=target/debug/edgeseg
profile=target/release/examples/profile_onnx
out=target/bench/inference
mkdir -p "$out"
cores=$(nproc)

# The demo's models, and the same run exported and quantised at 512x256
# (calibrated on synthetic scenes, as the demo does).
cp "$demo/model.onnx" "$out/demo.onnx"
cp "$demo/model.int8.onnx" "$out/demo.int8.onnx"
if [ ! -e "$out/wide.int8.onnx" ]; then
    "$edgeseg" -q export --run "$demo/run" --size 512x256 --out "$out/wide.onnx" >/dev/null
    "$edgeseg" -q synth --out "$out/calib" --train 32 --val 16 --size 512x256 --seed 5 >/dev/null
    "$edgeseg" -q quantize --model "$out/wide.onnx" --calib "$out/calib" --data "$out/calib" \
        --out "$out/wide.int8.onnx" >/dev/null
fi

# Whether tract has half-precision matrix kernels for this CPU (--info's field;
# on x86 with AVX-512 FP16 it has none, and f16 would run its scalar kernel).
f16=$(target/release/edgeseg-run --model "$out/demo.onnx" --precision f32 --info 2>/dev/null |
    "$python" -c 'import json,sys; print(json.load(sys.stdin)["cpu_f16_products"])' || echo False)

median() { "$python" -c 'import json,sys; print("%.2f" % json.loads(sys.stdin.readlines()[0])["median_ms"])'; }
ours() { "$profile" "$@" --frames "$frames" | median; }
ort() { "$python" bench/ort_time.py "$1" "$2" "$frames" | median; }

echo "| model | precision | threads | onnxruntime ms | edgeseg ms | plain tract ms | edgeseg / onnxruntime |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for model in demo wide; do
    precisions=(f32 int8)
    [ "$f16" = True ] && precisions+=(f16)
    for precision in "${precisions[@]}"; do
        file="$out/$model.onnx"
        [ "$precision" = int8 ] && file="$out/$model.int8.onnx"
        for threads in 1 "$cores"; do
            o=$(ort "$file" "$threads")
            if [ "$precision" = f16 ]; then o="-"; fi
            e=$(ours "$file" --precision "$precision" --threads "$threads")
            t=$(ours "$file" --precision "$precision" --threads "$threads" --no-winograd --no-own-ops)
            ratio=$("$python" -c "print('-' if '$o' == '-' else '%.2fx' % ($e / $o))")
            size=$("$profile" "$file" --precision "$precision" --frames 1 |
                "$python" -c 'import json,sys; print(json.loads(sys.stdin.readline())["size"])')
            echo "| $model ($size) | $precision | $threads | $o | $e | $t | $ratio |"
        done
    done
done

echo
echo "Slowest nodes, demo model, f32, 1 thread (edgeseg's engine):"
"$profile" "$out/demo.onnx" --frames 5 --top "$top" | tail -n +2
echo
echo "Slowest nodes, demo model, int8, 1 thread:"
"$profile" "$out/demo.int8.onnx" --precision int8 --frames 5 --top "$top" | tail -n +2
