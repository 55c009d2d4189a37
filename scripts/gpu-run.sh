#!/usr/bin/env bash
# One run on the NVIDIA GPU machine (see docs/gpu-testing.md): unpack the carried Vulkan loader and
# wheels, then the whole suite with validation, the kit, the benchmarks and the nvidia-smi
# comparison. Results go to $OUT (default ./gpu-out). Usage, from the repo root on that machine:
#   bash scripts/gpu-run.sh [quick]
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export XDG_RUNTIME_DIR=/tmp PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
if ! python3 -c 'from exo_gpu_vulkan.backend import probe; import sys; sys.exit(probe() is not None)'; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
log() { printf '\n==> %s\n' "$*"; }
{
  log "machine"; date -u; nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,memory.free --format=csv
  python3 -c 'from exo_gpu_vulkan.backend import probe; print("vulkan probe:", probe() or "ok")'
  log "exo-gpu plugins / devices / info"
  python3 -m exo_gpu_plugins.cli plugins
  python3 -m exo_gpu_plugins.cli devices
  python3 -m exo_gpu_plugins.cli info vulkan:0
} 2>&1 | tee "$OUT/devices.txt"
{
  log "device truth vs nvidia-smi"
  python3 benchmarks/device_truth.py --gib 8
} 2>&1 | tee "$OUT/truth.txt"
{
  log "pytest: whole suite, validation on"
  EXO_VULKAN_VALIDATION=1 EXO_GPU_REQUIRE_VULKAN=1 timeout 200 python3 -m pytest tests -q -p no:cacheprovider 2>&1 | tail -25
  log "exo-gpu check vulkan (validation on)"
  EXO_VULKAN_VALIDATION=1 timeout 120 python3 -m exo_gpu_plugins.cli check vulkan
} 2>&1 | tee "$OUT/tests.txt"
[ "${1:-}" = quick ] && exit 0
{
  log "copy speed, this project beside the peers"
  timeout 180 python3 -m exo_gpu_plugins.cli bench --json > "$OUT/bench.json"
  python3 -c 'import json,sys; from exo_gpu_plugins.bench import Figure, render; d=json.load(open(sys.argv[1])); render([Figure(**f) for f in d["figures"]], d["peers"], "vulkan", sys.stdout); print(d["peer_versions"], d["device"]["name"], d["backend"])' "$OUT/bench.json"
  log "peak RSS during a 256 MiB upload"
  timeout 40 python3 benchmarks/upload_memory.py --backends vulkan
  log "small operations: engine alone versus the async API"
  timeout 60 python3 benchmarks/small_ops_profile.py --backend vulkan
} 2>&1 | tee "$OUT/bench.txt"
{
  log "reliability, full size"
  timeout 150 python3 benchmarks/reliability.py --backends vulkan
} 2>&1 | tee "$OUT/reliability.txt"
