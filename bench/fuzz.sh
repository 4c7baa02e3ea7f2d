#!/usr/bin/env bash
# Fuzzes edgeseg's parsers with AFL++ (cargo afl), each target from its seed
# corpus in fuzz/seeds/, all at once: the wire-protocol decoder and mask
# assembler, the MJPEG splitter, the raw-frame reader, the model metadata
# reader and the dataset label reader.
#   bench/fuzz.sh [SECONDS [EXECUTIONS]]   (defaults: 1800 s, 10,000,000;
#   0 executions: no limit). Fails if any target found a crash or a hang.
#   FUZZ_TARGETS="raw_frames labels" runs only those.
# Prints each target's executions, speed, corpus, crashes and hangs.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-1800}
execs=${2:-10000000}
command -v cargo-afl >/dev/null || cargo install cargo-afl --locked --quiet
cd fuzz
cargo afl build --release --quiet
out=${FUZZ_OUT:-$(mktemp -d)}
mkdir -p "$out"
limit=()
[ "$execs" -gt 0 ] && limit=(-E "$execs")
read -ra targets <<<"${FUZZ_TARGETS:-protocol mjpeg raw_frames model_info labels}"
pids=()
for target in "${targets[@]}"; do
    AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1 \
        cargo afl fuzz -i "seeds/$target" -o "$out/$target" "${limit[@]}" -V "$seconds" \
        "target/release/$target" >"$out/$target.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for target in "${targets[@]}"; do
    stats=$out/$target/default/fuzzer_stats
    if [ ! -f "$stats" ]; then
        echo "$target: AFL did not run:" >&2
        tail -n 20 "$out/$target.log" >&2
        exit 1
    fi
    get() { sed -nE "s/^$1 *: *//p" "$stats"; }
    echo "$target: $(get execs_done) executions in $(get run_time) s ($(get execs_per_sec)/s), corpus $(get corpus_count), crashes $(get saved_crashes), hangs $(get saved_hangs)"
    if [ "$(get saved_crashes)" != 0 ] || [ "$(get saved_hangs)" != 0 ]; then
        echo "$target: crashes or hangs in $out/$target/default/" >&2
        status=1
    fi
done
exit $status
