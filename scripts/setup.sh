#!/usr/bin/env bash
# Installs everything the project needs, idempotently, into .venv (override with VENV=...):
#   1. Debian's Vulkan packages (loader, lavapipe = Vulkan on the CPU, validation layer), via
#      apt-get as root or through sudo; skipped when already present.
#   2. The core package (editable) with its test and lint tools (EXTRAS=interop-tests adds torch,
#      which `make test` needs for the DLPack tests: about 5 GB with its CUDA libraries).
#   3. The Vulkan plugin, built from rust/ by maturin (needs cargo: https://rustup.rs).
# Usage: scripts/setup.sh            (what `make demo` and `make test` call)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
say() { printf 'setup: %s\n' "$*" >&2; }

need_packages=()
ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1 ' || need_packages+=(libvulkan1)
ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || need_packages+=(mesa-vulkan-drivers)
ls /usr/share/vulkan/explicit_layer.d/VkLayer_khronos_validation.json >/dev/null 2>&1 \
  || need_packages+=(vulkan-validationlayers)
if [ ${#need_packages[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    say "installing ${need_packages[*]} with apt-get"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_packages[@]}" >/dev/null
  else
    say "no apt-get: install the Vulkan loader, a driver and the validation layer yourself (${need_packages[*]})"
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian's own python3 ships venv separately.
    rm -rf "$VENV"
    if command -v apt-get >/dev/null; then
      sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
      say "installing python3-venv with apt-get"
      $sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
    fi
    python3 -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
case ",${EXTRAS:-}," in
  *,interop-tests,*)
    # torch's wheel and its CUDA libraries take about 5 GB installed and as much again as downloads
    # while pip installs them (kept in pip's cache unless PIP_NO_CACHE_DIR=1): refuse up front with
    # the numbers rather than fail half-way with "No space left on device".
    if ! "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'; then
      need_gib=9
      free_gib=$(df -Pk "$VENV" 2>/dev/null | awk 'NR == 2 { print int($4 / 1048576) }') || free_gib=""
      if [ -z "$free_gib" ]; then
        say "cannot tell the free space of $VENV's file system; installing torch (about $need_gib GiB while installing) anyway"
      elif [ "$free_gib" -lt "$need_gib" ]; then
        say "torch (for the DLPack tests) needs about $need_gib GiB free while installing; $VENV's file system has $free_gib GiB"
        exit 1
      fi
    fi
    ;;
esac
say "installing exo-gpu-plugins (editable) with dev tools${EXTRAS:+ and $EXTRAS}"
"$PY" -m pip install -q --disable-pip-version-check -e ".[dev,testing${EXTRAS:+,$EXTRAS}]"
# An older `make test` installed the example plugin here, where it became a user's backend.
if "$PY" -m pip show -q exo-gpu-example >/dev/null 2>&1; then
  say "removing exo-gpu-example from $VENV (tests install it into a temporary folder)"
  "$PY" -m pip uninstall -q -y exo-gpu-example
fi

if ! command -v cargo >/dev/null; then
  say "cargo not found: the Vulkan plugin needs Rust (https://rustup.rs); continuing with the host backend only"
  exit 0
fi
say "building the Vulkan plugin (maturin, release)"
"$PY" -m pip install -q --disable-pip-version-check 'maturin>=1.5,<2'
rm -rf dist/vulkan && mkdir -p dist/vulkan
(cd vulkan_plugin && "../$VENV/bin/maturin" build --release --quiet -o ../dist/vulkan ${MATURIN_FEATURES:+--features "$MATURIN_FEATURES"} >&2)
"$PY" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps dist/vulkan/exo_gpu_vulkan-*.whl
say "ready: $VENV/bin/exo-gpu"
