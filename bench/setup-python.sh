#!/usr/bin/env bash
# Creates the Python environment the benchmarks and ONNX checks use, outside the
# repository: torch (reference training step), onnx and onnxruntime (checker and
# second runtime). Prints the interpreter path.
#   EDGESEG_VENV  where to put it (default ~/.cache/edgeseg/venv)
#   --no-torch    skip torch (it pulls about 2.7 GB of CUDA wheels from PyPI)
set -euo pipefail
venv=${EDGESEG_VENV:-$HOME/.cache/edgeseg/venv}
packages=(numpy onnx onnxruntime pillow)
[ "${1:-}" = "--no-torch" ] || packages+=(torch)
if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$(dirname "$venv")"
    if ! python3 -m venv "$venv" >&2; then
        # Debian's system Python keeps venv in a separate package.
        rm -rf "$venv"
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
        python3 -m venv "$venv" >&2
    fi
fi
missing=()
for p in "${packages[@]}"; do
    "$venv/bin/python" -c "import ${p/pillow/PIL}" 2>/dev/null || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "${missing[@]}" >&2
fi
echo "$venv/bin/python"
