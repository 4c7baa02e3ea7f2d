#!/usr/bin/env bash
# Training-step time and images per second of edgeseg's networks on every
# backend this machine has: the CPU (burn-flex), and wgpu, Vulkan, CUDA and
# ROCm where their drivers answer. The networks and batch are
# bench/train-step.sh's, so the CPU rows compare with PyTorch there.
#
#   bench/gpu.sh [STEPS]          (default 10 timed steps after 2 untimed)
#
# Builds edgeseg once with the GPU features (`--features wgpu,vulkan,cuda,rocm`
# by default; FEATURES="wgpu" to build fewer), then for each device in DEVICES
# (default "cpu wgpu vulkan cuda rocm") runs `edgeseg bench-step --device D`
# per network. A device whose driver is missing prints its error and is
# skipped. Output: one JSON line per device and network (median step seconds,
# images per second, the parameter count) in target/bench-gpu.jsonl, then a
# Markdown table for BENCHMARKS.md.
#
# PARALLEL (default none) lists comma-separated device sets to time as well,
# data parallel, e.g. PARALLEL="cuda:0,cuda:1 cuda:0,cuda:1,cuda:2,cuda:3": the
# batch (4 per device, so each device's share stays the same) is split across
# them; the table's images/s is the whole set's, and "per device" divides it.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-10}
features=${FEATURES:-wgpu,vulkan,cuda,rocm}
devices=${DEVICES:-cpu wgpu vulkan cuda rocm}
cargo build -q --release -p host --bin edgeseg --features "$features"
edgeseg=target/release/edgeseg
out=target/bench-gpu.jsonl
: >"$out"
cases=("unet unet 1 256x256" "linknet18 linknet18 1 256x256" "linknet18x0.5 linknet18 0.5 256x192")
for device in $devices ${PARALLEL:-}; do
    count=$(tr ',' '\n' <<<"$device" | wc -l)
    for c in "${cases[@]}"; do
        read -r name model width size <<<"$c"
        if ! "$edgeseg" bench-step --device "$device" --model "$model" --width "$width" \
            --size "$size" --batch $((4 * count)) --steps "$steps" --warmup 2 >target/bench-gpu.line 2>target/bench-gpu.err; then
            echo "$device: skipped ($(tail -1 target/bench-gpu.err))" >&2
            continue 2
        fi
        python3 -c '
import json, sys
row = json.loads(open(sys.argv[1]).read())
row["case"] = sys.argv[2]
print(json.dumps(row))' target/bench-gpu.line "$name" | tee -a "$out"
    done
done
python3 - "$out" "$(nproc)" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"\n| network | device | batch | median step | images/s | per device | params |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    print(f"| {r['case']} {r['size']} | {r['device']} | {r['batch']} | {1000 * r['median_s']:.0f} ms | "
          f"{r['images_per_s']:.1f} | {r['images_per_s'] / r['devices']:.1f} | {r['params']:,} |")
print(f"\n({sys.argv[2]} CPU cores)")
EOF
