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
# Runs one benchmark command and appends its JSON line with "peak_rss_mib",
# the case's name (first argument) and the variant's (second) added.
measure() {
    local case=$1 variant=$2
    shift 2
    /usr/bin/time -f %M -o "$rss" "$@" | "$python" -c '
import json, sys
row = json.loads(sys.stdin.read())
row["peak_rss_mib"] = round(int(open(sys.argv[1]).read().split()[-1]) / 1024)
row["variant"] = sys.argv[2]
row["case"] = sys.argv[3]
print(json.dumps(row))' "$rss" "$variant" "$case" | tee -a "$out"
}
# Cases: name, model, LinkNet width, size. The issue's two networks, and the
# small LinkNet the synthetic-scene recipe trains.
cases=("unet unet 1 256x256" "linknet18 linknet18 1 256x256" "linknet18x0.5 linknet18 0.5 256x192")
# Burn runs twice per round: as shipped, and with burn-flex's Winograd 3x3
# convolutions turned off (im2col + GEMM for every convolution).
for c in "${cases[@]}"; do
    read -r name model width size <<<"$c"
    args=(--model "$model" --width "$width" --size "$size" --batch 4)
    for _ in $(seq "$rounds"); do
        RAYON_NUM_THREADS=$threads measure "$name" burn "$edgeseg" bench-step "${args[@]}"
        RAYON_NUM_THREADS=$threads BURN_FLEX_WINOGRAD=0 measure "$name" burn-im2col "$edgeseg" bench-step "${args[@]}"
        measure "$name" pytorch "$python" bench/torch_step.py "${args[@]}" --threads "$threads"
    done
done
"$python" - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def pick(variant, case):
    return [r for r in rows if r["variant"] == variant and r["case"] == case]
variants = ("burn", "burn-im2col", "pytorch")
for model in dict.fromkeys(r["case"] for r in rows):
    b, i, t = (statistics.median(r["median_s"] for r in pick(v, model)) for v in variants)
    bp, tp = (pick(v, model)[0]["params"] for v in ("burn", "pytorch"))
    rss = {v: max(r["peak_rss_mib"] for r in pick(v, model)) for v in variants}
    print(f"{model}: burn {b:.3f} s/step, burn without Winograd {i:.3f}, pytorch {t:.3f}; "
          f"ratio burn/pytorch {b / t:.2f} (without Winograd {i / t:.2f}); params {bp} vs {tp}; "
          f"peak RSS burn {rss['burn']} MiB, without Winograd {rss['burn-im2col']} MiB, pytorch {rss['pytorch']} MiB")
PY
