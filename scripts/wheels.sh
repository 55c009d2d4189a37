#!/usr/bin/env bash
# Both distributions into dist/: wheels that install on glibc >= 2.17 (manylinux2014) or, failing
# that, 2.28, plus an sdist of each. The Vulkan wheel is linked by zig (the `ziglang` package from
# PyPI) against an old glibc, so the build machine's own glibc does not leak into the tag;
# `auditwheel show` then has to agree with the tag. Usage (after scripts/setup.sh):
#   scripts/wheels.sh            wheels + sdists, checked by auditwheel
#   scripts/wheels.sh --sdist-check   also build a wheel from each sdist in a clean folder
#   scripts/wheels.sh --vulkan-sdist DIR   only the Vulkan plugin's sdist, into DIR (absolute)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$PWD/$VENV/bin/python"
say() { printf 'wheels: %s\n' "$*" >&2; }

# maturin sdist, from vulkan_plugin/, first prints "error: manifest path `Cargo.toml` does not
# exist" and then builds a complete sdist from ../rust: that line is noise and is dropped (any other
# output, and maturin's exit status, pass through).
vulkan_sdist() {
  (cd vulkan_plugin && maturin sdist --out "${1:-../dist}" 2>&1) \
    | { grep -v 'manifest path `Cargo.toml` does not exist' || true; } >&2
}
if [ "${1:-}" = --vulkan-sdist ]; then
  export PATH="$PWD/$VENV/bin:$PATH"
  vulkan_sdist "$2"
  exit
fi

"$PY" -m pip install -q --disable-pip-version-check 'maturin>=1.5,<2' ziglang auditwheel build
mkdir -p dist && rm -f dist/exo_gpu_*.whl dist/exo_gpu_*.tar.gz
export PATH="$PWD/$VENV/bin:$PATH"

say "exo-gpu-plugins: wheel and sdist"
"$PY" -m build --quiet --outdir dist . >/dev/null

say "exo-gpu-vulkan: wheel (maturin --zig) and sdist"
built=""
for policy in manylinux2014 manylinux_2_28; do
  if (cd vulkan_plugin && maturin build --release --quiet --zig --compatibility "$policy" \
        -o ../dist >&2); then
    built=$policy; break
  fi
  say "maturin --zig --compatibility $policy failed; trying the next policy"
done
[ -n "$built" ] || { say "no manylinux wheel could be built"; exit 1; }
vulkan_sdist

say "auditwheel show (policy must be manylinux_2_28 or older)"
for wheel in dist/exo_gpu_vulkan-*.whl; do
  report=$("$VENV/bin/auditwheel" show "$wheel")
  printf '%s\n' "$report"
  tag=$(printf '%s' "$report" | tr '\n' ' ' | grep -o 'platform tag: *"manylinux_2_[0-9]*' | head -1 \
    | grep -o '[0-9]*$')
  if [ -z "$tag" ] || [ "$tag" -gt 28 ]; then
    say "$wheel: auditwheel policy manylinux_2_${tag:-?} is newer than manylinux_2_28"; exit 1
  fi
done

if [ "${1:-}" = --sdist-check ]; then
  say "building a wheel from each sdist in a clean folder"
  scratch=$(mktemp -d); trap 'rm -rf "$scratch"' EXIT
  for sdist in dist/exo_gpu_*.tar.gz; do
    tar -xzf "$sdist" -C "$scratch"
  done
  for tree in "$scratch"/*/; do
    "$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$scratch/out" "$tree" >&2
  done
  ls "$scratch/out"
fi
ls -1 dist/exo_gpu_*
