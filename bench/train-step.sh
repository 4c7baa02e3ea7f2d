#!/usr/bin/env bash
# Training-step time of Burn (burn-flex) against PyTorch on the same network,
# batch, size and thread count, run alternately in one session so both see the
# same machine. Prints each run's JSON (with the process's peak RSS, from GNU
# time) and the median ratio Burn / PyTorch.
#   bench/train-step.sh [ROUNDS]     (default 3 rounds of 10 timed steps each)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
python=$(bash bench/setup-python.sh)
cargo build -q --release -p host --bin edgeseg
edgeseg=target/release/edgeseg
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }
threads=$(nproc)
out=target/bench-train-step.jsonl
rss=target/bench-train-step.rss
: >"$out"
# Runs one benchmark command and appends its JSON line with "peak_rss_mib" added.
measure() {
    /usr/bin/time -f %M -o "$rss" "$@" | "$python" -c '
import json, sys
row = json.loads(sys.stdin.read())
row["peak_rss_mib"] = round(int(open(sys.argv[1]).read().split()[-1]) / 1024)
print(json.dumps(row))' "$rss" | tee -a "$out"
}
for model in unet linknet18; do
    for _ in $(seq "$rounds"); do
        RAYON_NUM_THREADS=$threads measure "$edgeseg" bench-step --model "$model" --size 256x256 --batch 4
        measure "$python" bench/torch_step.py --model "$model" --size 256x256 --batch 4 --threads "$threads"
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
          f"ratio {statistics.median(b) / statistics.median(t):.2f} (params {bp} vs {tp}); peak RSS "
          f"burn {max(r['peak_rss_mib'] for r in rows if r['framework'].startswith('burn') and r['model'].startswith(model))} MiB, "
          f"pytorch {max(r['peak_rss_mib'] for r in rows if r['framework'].startswith('pytorch') and r['model'] == model)} MiB")
PY
