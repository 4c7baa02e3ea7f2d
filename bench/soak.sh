#!/usr/bin/env bash
# Soak: edgeseg-run left running as on a board, with everything that comes and
# goes around it, then checks that nothing grew and no frame went missing.
#   bench/soak.sh [MINUTES] [MODEL]   (defaults: 30, demo-out/model.onnx)
# - the camera: a command (--exec) writing raw 320x240 RGB frames, killed every
#   5 s (edgeseg-run restarts it with backoff);
# - the live view with 20 clients that connect, read the stream or a page
#   for a moment, and leave, over and over;
# - a tcp: consumer that listens for 10 s, goes away for 5 s, and comes back.
# Every 10 s the process's RSS and thread count go to soak.csv. At the end it
# sends SIGTERM and checks: RSS and threads over the last quarter within 5 % of
# the second quarter's (the first is warm-up), and captured = processed +
# dropped in the final counters. Run nothing else meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
model=${2:-demo-out/model.onnx}
[ -f "$model" ] || { echo "no model at $model: run edgeseg demo first" >&2; exit 1; }
cargo build -q --release -p firmware --bin edgeseg-run
out=$(mktemp -d)
echo "soak: $minutes min, files in $out"
http_port=$((20000 + RANDOM % 10000)) tcp_port=$((30000 + RANDOM % 10000))
# edgeseg-run runs it with `sh -c`: the loop shell is its child.
camera="while :; do head -c 230400 /dev/urandom; sleep 0.04; done"
target/release/edgeseg-run --model "$model" --precision f32 --threads 1 \
    --source stdin:rgb:320x240 --exec "$camera" --max-restarts 1000000 \
    --sink "http:127.0.0.1:$http_port" --sink "tcp:127.0.0.1:$tcp_port" \
    --report-every 60 >"$out/run.out" 2>"$out/run.err" &
run=$!
helpers=()
# The camera killer: the loop shell (edgeseg-run's child) and what it runs.
( while sleep 5; do
    for c in $(pgrep -P "$run" || true); do pkill -KILL -P "$c" || true; kill -KILL "$c" 2>/dev/null || true; done
done ) &
helpers+=($!)
python3 - "$http_port" "$tcp_port" "$((minutes * 60))" <<'PY' &
import socket, sys, threading, time, random
http, tcp, seconds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
end = time.time() + seconds
def client(i):
    rng = random.Random(i)
    while time.time() < end:
        try:
            s = socket.create_connection(("127.0.0.1", http), timeout=5)
            path = rng.choice(["/stream", "/stats.json", "/metrics", "/", "/frame.jpg"])
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            stop = time.time() + rng.uniform(0.2, 3.0)
            while time.time() < stop and s.recv(65536):
                pass
            s.close()
        except OSError:
            pass
        time.sleep(rng.uniform(0.05, 0.5))
def consumer():
    while time.time() < end:
        srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", tcp)); srv.listen(1); srv.settimeout(1)
        stop = time.time() + 10
        conn = None
        while time.time() < stop:
            try:
                if conn is None:
                    conn, _ = srv.accept(); conn.settimeout(1)
                elif not conn.recv(65536):
                    conn = None
            except OSError:
                pass
        if conn: conn.close()
        srv.close()
        time.sleep(5)
threads = [threading.Thread(target=client, args=(i,)) for i in range(20)] + [threading.Thread(target=consumer)]
for t in threads: t.start()
for t in threads: t.join()
PY
helpers+=($!)
echo "seconds,rss_kb,threads" >"$out/soak.csv"
start=$SECONDS
while [ $((SECONDS - start)) -lt $((minutes * 60)) ]; do
    sleep 10
    kill -0 "$run" 2>/dev/null || { echo "edgeseg-run died:" >&2; tail -n 20 "$out/run.err" >&2; exit 1; }
    rss=$(sed -nE 's/^VmRSS:\s+([0-9]+).*/\1/p' "/proc/$run/status")
    threads=$(sed -nE 's/^Threads:\s+([0-9]+)/\1/p' "/proc/$run/status")
    echo "$((SECONDS - start)),$rss,$threads" >>"$out/soak.csv"
done
kill -TERM "$run"
status=0
wait "$run" || status=$?
for h in "${helpers[@]}"; do kill "$h" 2>/dev/null || true; done
wait 2>/dev/null || true
python3 - "$out/soak.csv" "$out/run.err" "$status" <<'PY'
import csv, re, sys
rows = list(csv.DictReader(open(sys.argv[1])))
err = open(sys.argv[2]).read()
q = max(1, len(rows) // 4)
def mean(rs, k): return sum(float(r[k]) for r in rs) / len(rs)
second, last = rows[q:2 * q], rows[-q:]
ok = True
for k in ["rss_kb", "threads"]:
    a, b = mean(second, k), mean(last, k)
    growth = (b - a) / a
    print(f"{k}: {a:.0f} in the second quarter, {b:.0f} in the last ({100 * growth:+.1f} %)")
    ok &= abs(growth) <= 0.05
m = re.search(r"(\d+) frames captured, (\d+) processed, (\d+) dropped", err)
restarts = re.search(r"camera restarted (\d+) times", err)
print(m.group(0) if m else "no final counters", "; camera restarted", restarts.group(1) if restarts else "?", "times; exit", sys.argv[3])
ok &= bool(m) and int(m.group(1)) == int(m.group(2)) + int(m.group(3)) and sys.argv[3] == "0"
print("soak:", "passed" if ok else "FAILED")
sys.exit(0 if ok else 1)
PY
