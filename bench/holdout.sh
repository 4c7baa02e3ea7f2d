#!/usr/bin/env bash
# Leave-one-drive-out validation on CamVid: the benchmark protocol for
# accuracy on streets a model has never seen.
#
#   bench/holdout.sh OUT_DIR SAMPLES [edgeseg train flags...]
#
# For each of CamVid's three training drives (0001TP, 0006R0, 0016E5), trains
# on the other two (train and val pooled, `--val-sequence DRIVE`) and scores
# the held-out drive with `edgeseg eval` at the labels' own 480x360, on the
# *last* checkpoint: choosing the best epoch on the held-out drive would fit
# to it. Prints one row per fold, the mean and the spread, and per-class IoU.
#
# The budget is SAMPLES training samples per fold, not minutes, so a fold's
# result does not depend on what else the machine ran meanwhile: each fold
# trains round(SAMPLES / its training frames) epochs, with the schedule and
# progressive resizing on steps. BENCHMARKS.md gives the minutes that
# SAMPLES took on this machine when nothing else ran.
#
# A fold whose OUT_DIR/DRIVE.json exists is not run again, and a fold whose
# training was cut short (its run folder has epochs but no score) resumes
# from its last checkpoint, so the protocol can be spread over several
# sessions. The binary is copied to OUT_DIR/edgeseg on the first call and
# that copy trains every fold, so a rebuild meanwhile changes nothing.
# Environment:
#   DATA       CamVid folder (default ../shared/datasets/camvid)
#   FOLDS      drives to hold out (default "0001TP 0006R0 0016E5")
#   VAL_EVERY  validate every N epochs during training (default 25)
#   EVAL_ARGS  extra `edgeseg eval` flags, such as "--tta flip"
#
# The README's 45-minute recipe, as its sample budget (see BENCHMARKS.md):
#   bench/holdout.sh target/bench/holdout-old 94686 --model linknet18 --width 0.5 \
#     --size 240x176 --batch 8 --lr 4e-3 --class-weights sqrt-median \
#     --loss "ce+1.0*dice" --progressive 0.63 --stem-skip
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1
samples=$2
shift 2
data=${DATA:-../shared/datasets/camvid}
folds=${FOLDS:-0001TP 0006R0 0016E5}
val_every=${VAL_EVERY:-25}
if [ ! -d "$data/train" ] || [ ! -d "$data/val" ]; then
    echo "skipping: CamVid is absent at $data (train/ and val/ expected)" >&2
    exit 0
fi
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }
mkdir -p "$out"
edgeseg=$out/edgeseg
if [ ! -x "$edgeseg" ]; then
    cargo build -q --release -p host --bin edgeseg
    cp target/release/edgeseg "$edgeseg"
fi
for fold in $folds; do
    if [ -f "$out/$fold.json" ]; then
        echo "$fold: scored already ($out/$fold.json)"
        continue
    fi
    frames=$(find "$data/train" "$data/val" -maxdepth 1 -name '*.png' ! -name "$fold*" | wc -l)
    epochs=$(( (samples + frames / 2) / frames ))
    run=$out/$fold
    start=$(date +%s)
    if [ -f "$run/state.json" ]; then
        echo "$fold: resuming the cut-short run in $run"
        /usr/bin/time -v -o "$run.time.txt" "$edgeseg" -q train --out "$run" --resume >>"$run.log"
    else
        echo "$fold: training on $frames frames of the other drives for $epochs epochs ($((epochs * frames)) samples)"
        rm -rf "$run"
        /usr/bin/time -v -o "$run.time.txt" "$edgeseg" -q train --out "$run" \
            --data "$data" --val-sequence "$fold" --val-every "$val_every" \
            --epochs "$epochs" "$@" >"$run.log"
    fi
    end=$(date +%s)
    echo "$fold: this call trained for $((end - start)) s"
    # shellcheck disable=SC2086
    "$edgeseg" -q eval --run "$run" --data "$data" --weights last.bpk ${EVAL_ARGS:-} \
        --json "$run.eval.json" | tee "$run.eval.txt"
    python3 - "$run.eval.json" "$out/$fold.json" "$fold" "$run/state.json" "$epochs" "$frames" "$*" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
state = json.load(open(sys.argv[4]))
# Training wall time over all the calls that trained this fold.
seconds = round(sum(r["seconds"] for r in state["history"]))
report.update(fold=sys.argv[3], seconds=seconds, epochs=state["epochs_done"],
              train_frames=int(sys.argv[6]), args=sys.argv[7])
json.dump(report, open(sys.argv[2], "w"), indent=1)
EOF
done
python3 - "$out" $folds <<'EOF'
import json, os, statistics, sys
out, folds = sys.argv[1], sys.argv[2:]
reports = [json.load(open(os.path.join(out, f + ".json"))) for f in folds
           if os.path.exists(os.path.join(out, f + ".json"))]
if not reports:
    sys.exit("no fold scored")
classes = reports[0]["classes"]
print(f"| held-out drive | frames scored | epochs | train wall s | mIoU | pixel acc | class acc | "
      + " | ".join(classes) + " |")
print("|" + " --- |" * (7 + len(classes)))
pct = lambda v: "-" if v is None else f"{100 * v:.1f}"
for r in reports:
    print(f"| {r['fold']} | {r['images']} | {r['epochs']} | {r['seconds']} | {pct(r['miou'])} | "
          f"{pct(r['pixel_accuracy'])} | {pct(r['class_accuracy'])} | "
          + " | ".join(pct(r["per_class_iou"][c]) for c in classes) + " |")
mious = [100 * r["miou"] for r in reports]
spread = statistics.stdev(mious) if len(mious) > 1 else 0.0
def mean_of(key):
    return statistics.mean(100 * r[key] for r in reports)
def class_mean(c):
    values = [r["per_class_iou"][c] for r in reports if r["per_class_iou"][c] is not None]
    return pct(statistics.mean(values)) if values else "-"
print(f"| mean of {len(reports)} (sd {spread:.1f}) | | | | **{statistics.mean(mious):.1f}** | "
      f"{mean_of('pixel_accuracy'):.1f} | {mean_of('class_accuracy'):.1f} | "
      + " | ".join(class_mean(c) for c in classes) + " |")
EOF
