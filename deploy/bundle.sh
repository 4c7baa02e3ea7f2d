#!/usr/bin/env bash
# Builds a deploy bundle for a board: edgeseg-run for the target, the model
# (the float file and its int8 quantisation NAME.int8.onnx beside it, whichever
# of the two exist), a systemd unit and an install script, in one tar.gz. The
# service runs with --precision auto: the board times f32, f16 and int8 at
# start-up and keeps the fastest whose masks agree with f32's.
#   deploy/bundle.sh TARGET MODEL.onnx OUT.tar.gz [SOURCE] [SINK...]
#   EDGESEG_RUN: an edgeseg-run for this machine, to read the model's input
#   size (default: built with cargo)
# TARGET: aarch64-unknown-linux-gnu (Raspberry Pi 4/5 with 64-bit OS, Jetson)
#         or armv7-unknown-linux-gnueabihf (32-bit Raspberry Pi OS).
# SOURCE and SINKs become the service's command line; by default the Pi camera
# through rpicam-vid and the live view on port 8080.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?target triple}
model=${2:?model file}
out=${3:?output .tar.gz}
shift 3
source_spec=${1:-}
[ $# -gt 0 ] && shift
sinks=("$@")
[ ${#sinks[@]} -gt 0 ] || sinks=(http:0.0.0.0:8080)
[ -f "$model" ] || { echo "model $model: no such file" >&2; exit 1; }

cargo build -q --release -p firmware --bin edgeseg-run --target "$target"
if [ -n "${EDGESEG_RUN:-}" ]; then
    host_run=("$EDGESEG_RUN")
else
    host_run=(cargo run -q --release -p firmware --bin edgeseg-run --)
fi
info=$("${host_run[@]}" --model "$model" --info --precision auto 2>/dev/null)
size=$(sed -E 's/.*"input_size":"([0-9]+x[0-9]+)".*/\1/' <<<"$info")
# The pair: NAME.onnx and NAME.int8.onnx.
if grep -q '"quantized":true' <<<"$info"; then
    float=${model%.int8.onnx}.onnx int8=$model
else
    float=$model int8=${model%.onnx}.int8.onnx
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/edgeseg
mkdir -p "$root"
cp "target/$target/release/edgeseg-run" "$root/"
models=()
[ -f "$float" ] && cp "$float" "$root/model.onnx" && models+=(model.onnx)
[ -f "$int8" ] && [ "$int8" != "$float" ] && cp "$int8" "$root/model.int8.onnx" && models+=(model.int8.onnx)
main_model=/opt/edgeseg/${models[0]}
sink_args=""
for s in "${sinks[@]}"; do sink_args+=" --sink $s"; done
if [ -z "$source_spec" ]; then
    # Raw YUV 4:2:0 from the Pi camera at four times the model's input size.
    w=${size%x*} h=${size#*x}
    w=$((w * 4 > 1920 ? 1920 : w * 4)) h=$((h * 4 > 1080 ? 1080 : h * 4))
    # edgeseg-run starts the camera itself and restarts it with backoff if it goes away.
    exec_line="/opt/edgeseg/edgeseg-run --model $main_model --precision auto --source stdin:yuv420:${w}x${h} --exec \"rpicam-vid -t 0 -n --codec yuv420 --width $w --height $h -o -\"${sink_args}"
else
    exec_line="/opt/edgeseg/edgeseg-run --model $main_model --precision auto --source $source_spec${sink_args}"
fi
# A restarted service replaces the outputs of the run before it.
exec_line+=" --overwrite"
cat >"$root/edgeseg.service" <<UNIT
[Unit]
Description=edgeseg live road-scene segmentation
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=$exec_line
Restart=always
RestartSec=2
# SIGTERM: edgeseg-run stops capture, writes what is queued and finishes
# every output, then exits 0.
TimeoutStopSec=15
# Its own user, with only the groups a camera (video) and a serial line
# (dialout) need; file outputs with relative paths land in /var/lib/edgeseg,
# the only place it may write.
User=edgeseg
SupplementaryGroups=video dialout
StateDirectory=edgeseg
WorkingDirectory=/var/lib/edgeseg
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
UNIT
cat >"$root/install.sh" <<'INSTALL'
#!/bin/sh
# Installs edgeseg into /opt/edgeseg and starts it as a systemd service.
set -eu
cd "$(dirname "$0")"
id edgeseg >/dev/null 2>&1 || useradd --system --no-create-home --groups video,dialout edgeseg
install -d /opt/edgeseg
install -m 755 edgeseg-run /opt/edgeseg/
for m in model.onnx model.int8.onnx; do
    [ ! -f "$m" ] || install -m 644 "$m" /opt/edgeseg/
done
install -m 644 edgeseg.service /etc/systemd/system/
systemctl daemon-reload
systemctl enable --now edgeseg.service
echo "edgeseg is running: systemctl status edgeseg; journalctl -u edgeseg -f"
INSTALL
chmod +x "$root/install.sh"
tar -C "$stage" -czf "$out" edgeseg
echo "wrote $out: $(tar -tzf "$out" | tr '\n' ' ')"
