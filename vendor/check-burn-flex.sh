#!/usr/bin/env bash
# Proves that vendor/burn-flex is crates.io's burn-flex 0.22.1 plus
# vendor/burn-flex.patch and nothing else: takes the pristine crate (from
# Cargo's registry cache, or downloaded from crates.io), checks its SHA-256,
# applies the patch and compares the result with vendor/burn-flex/src.
#   vendor/check-burn-flex.sh          (CI runs it)
# After changing vendor/burn-flex/src, regenerate the patch with
#   vendor/check-burn-flex.sh --write
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.22.1
sha256=7e05d08ef48d738fadf13f8689b634f8b396d5a8cbb27d0a87f61e163d241846
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
crate=$work/burn-flex-$version.crate
cached=$(ls ~/.cargo/registry/cache/*/burn-flex-$version.crate 2>/dev/null | head -1 || true)
if [ -n "$cached" ]; then
    cp "$cached" "$crate"
else
    curl -sfL -o "$crate" "https://static.crates.io/crates/burn-flex/burn-flex-$version.crate"
fi
echo "$sha256  $crate" | sha256sum -c --quiet -
tar -xzf "$crate" -C "$work"
pristine=$work/burn-flex-$version
if [ "${1:-}" = --write ]; then
    mkdir -p "$work/a" "$work/b"
    cp -r "$pristine/src" "$work/a/src"
    cp -r vendor/burn-flex/src "$work/b/src"
    (cd "$work" && diff -ruN a/src b/src | sed -E 's#^(---|\+\+\+) ([ab]/[^\t]*)\t.*#\1 \2#') \
        >vendor/burn-flex.patch || true
    echo "wrote vendor/burn-flex.patch"
    exit 0
fi
patch -s -p1 -d "$pristine" <vendor/burn-flex.patch
diff -r "$pristine/src" vendor/burn-flex/src
echo "vendor/burn-flex is burn-flex $version plus vendor/burn-flex.patch ($(grep -c '^+++ ' vendor/burn-flex.patch) files)"
