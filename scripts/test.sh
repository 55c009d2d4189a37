#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint and types, the Rust engine's own checks, then the
# Python suite on lavapipe with Vulkan validation on, once per transfer strategy.
# Usage: scripts/test.sh [extra pytest args]      (what `make test` calls, after setup)
# Nothing is left installed that a user's `exo-gpu` would then pick up: the example plugin goes
# into a temporary folder for its own tests only.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH" XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp} EXO_GPU_REQUIRE_VULKAN=1
step() { printf '\n==> %s\n' "$*"; }

step "ruff and mypy --strict (core and plugin)"
ruff check exo_gpu_plugins vulkan_plugin tests benchmarks examples
ruff format --check exo_gpu_plugins vulkan_plugin tests benchmarks examples
mypy exo_gpu_plugins
mypy vulkan_plugin/python/exo_gpu_vulkan
python -m mypy.stubtest exo_gpu_vulkan._native --ignore-missing-stub

if command -v cargo >/dev/null; then
  step "cargo fmt, clippy -D warnings, cargo test (engine on lavapipe)"
  (cd rust && cargo fmt --all --check && cargo clippy --all-targets --all-features -- -D warnings \
    && cargo test --all-features -q)
fi

step "pytest: the whole suite, Vulkan validation on"
EXO_VULKAN_VALIDATION=1 python -m pytest tests -q "$@"

for strategy in mapped staging import; do
  step "pytest: Vulkan contract with EXO_VULKAN_TRANSFER=$strategy, validation on"
  EXO_VULKAN_TRANSFER=$strategy EXO_VULKAN_VALIDATION=1 python -m pytest tests/vulkan -q "$@"
done

step "the example plugin passes the kit (installed into a throwaway folder, not into $VENV)"
example_site=$(mktemp -d); trap 'rm -rf "$example_site"' EXIT
python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
  --target "$example_site" ./examples/minimal_plugin
PYTHONPATH="$example_site" python -m pytest examples/minimal_plugin/tests -q
