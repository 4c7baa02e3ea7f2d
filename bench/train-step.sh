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
# Runs one benchmark command and appends its JSON line with "peak_rss_mib"
# and the variant's name (first argument) added.
measure() {
    local variant=$1
    shift
    /usr/bin/time -f %M -o "$rss" "$@" | "$python" -c '
import json, sys
row = json.loads(sys.stdin.read())
row["peak_rss_mib"] = round(int(open(sys.argv[1]).read().split()[-1]) / 1024)
row["variant"] = sys.argv[2]
print(json.dumps(row))' "$rss" "$variant" | tee -a "$out"
}
# Burn runs twice per round: as shipped, and with burn-flex's Winograd 3x3
# convolutions turned off (im2col + GEMM for every convolution).
for model in unet linknet18; do
    for _ in $(seq "$rounds"); do
        RAYON_NUM_THREADS=$threads measure burn "$edgeseg" bench-step --model "$model" --size 256x256 --batch 4
        RAYON_NUM_THREADS=$threads BURN_FLEX_WINOGRAD=0 measure burn-im2col "$edgeseg" bench-step --model "$model" --size 256x256 --batch 4
        measure pytorch "$python" bench/torch_step.py --model "$model" --size 256x256 --batch 4 --threads "$threads"
    done
done
"$python" - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def pick(variant, model):
    return [r for r in rows if r["variant"] == variant and r["model"].startswith(model)]
variants = ("burn", "burn-im2col", "pytorch")
for model in ("unet", "linknet18"):
    b, i, t = (statistics.median(r["median_s"] for r in pick(v, model)) for v in variants)
    bp, tp = (pick(v, model)[0]["params"] for v in ("burn", "pytorch"))
    rss = {v: max(r["peak_rss_mib"] for r in pick(v, model)) for v in variants}
    print(f"{model}: burn {b:.3f} s/step, burn without Winograd {i:.3f}, pytorch {t:.3f}; "
          f"ratio burn/pytorch {b / t:.2f} (without Winograd {i / t:.2f}); params {bp} vs {tp}; "
          f"peak RSS burn {rss['burn']} MiB, without Winograd {rss['burn-im2col']} MiB, pytorch {rss['pytorch']} MiB")
PY
