#!/usr/bin/env bash
# Training-step time of Burn (burn-flex) against PyTorch on the same network,
# batch, size and thread count, run alternately in one session so both see the
# same machine. Prints each run's JSON and the median ratio Burn / PyTorch.
#   bench/train-step.sh [ROUNDS]     (default 3 rounds of 10 timed steps each)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
python=$(bash bench/setup-python.sh)
cargo build -q --release -p host --bin edgeseg
edgeseg=target/release/edgeseg
threads=$(nproc)
out=target/bench-train-step.jsonl
: >"$out"
for model in unet linknet18; do
    for _ in $(seq "$rounds"); do
        RAYON_NUM_THREADS=$threads "$edgeseg" bench-step --model "$model" --size 256x256 --batch 4 | tee -a "$out"
        "$python" bench/torch_step.py --model "$model" --size 256x256 --batch 4 --threads "$threads" | tee -a "$out"
    done
done
"$python" - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for model in ("unet", "linknet18"):
    b = [r["median_s"] for r in rows if r["framework"].startswith("burn") and r["model"].startswith(model)]
    t = [r["median_s"] for r in rows if r["framework"].startswith("pytorch") and r["model"] == model]
    bp = next(r["params"] for r in rows if r["framework"].startswith("burn") and r["model"].startswith(model))
    tp = next(r["params"] for r in rows if r["framework"].startswith("pytorch") and r["model"] == model)
    print(f"{model}: burn {statistics.median(b):.3f} s/step, pytorch {statistics.median(t):.3f} s/step, "
          f"ratio {statistics.median(b) / statistics.median(t):.2f} (params {bp} vs {tp})")
PY
