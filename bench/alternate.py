"""Timings side by side on a noisy machine: runs each command in turn, ROUNDS
times over, and prints the median of the medians each reported.

    python3 bench/alternate.py ROUNDS LABEL=COMMAND [LABEL=COMMAND ...]

Each COMMAND (split on spaces) must print a JSON line first with
`median_ms`, as `profile_onnx` and `bench/ort_time.py` do, e.g.

    python3 bench/alternate.py 7 \
        "f32=target/release/examples/profile_onnx demo-out/model.onnx" \
        "int8=target/release/examples/profile_onnx demo-out/model.int8.onnx --precision int8" \
        "ort=$PYTHON bench/ort_time.py demo-out/model.onnx 1 30"

Alternating the commands spreads whatever else the machine does over all of
them. An `edgeseg -q train` running meanwhile is paused (SIGSTOP) for the
measurement and resumed after it, even when a command fails.
"""
import json
import os
import signal
import statistics
import subprocess
import sys
import time


def trainings():
    out = subprocess.run(["pgrep", "-f", "edgeseg -q train"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def main():
    if len(sys.argv) < 3 or any("=" not in a for a in sys.argv[2:]):
        sys.exit(__doc__)
    rounds = int(sys.argv[1])
    commands = [a.split("=", 1) for a in sys.argv[2:]]
    paused = trainings()
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    time.sleep(2 if paused else 0)
    medians = {label: [] for label, _ in commands}
    try:
        for r in range(rounds):
            for label, command in commands:
                out = subprocess.run(command.split(), capture_output=True, text=True, check=True)
                medians[label].append(json.loads(out.stdout.splitlines()[0])["median_ms"])
            print(r, {k: round(v[-1], 2) for k, v in medians.items()}, flush=True)
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
    for label, values in medians.items():
        print(f"{label}: median of {len(values)} medians {statistics.median(values):.2f} ms "
              f"(fastest {min(values):.2f})")


if __name__ == "__main__":
    main()
