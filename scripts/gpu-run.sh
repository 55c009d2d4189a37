#!/usr/bin/env bash
# One run on the NVIDIA GPU machine (docs/gpu-testing.md): unpack the carried Vulkan loader and
# wheels, then either the checks or the benchmarks, each writing its tables under $OUT.
#   bash scripts/gpu-run.sh tests   devices, device truth against nvidia-smi, the whole suite with
#                                   validation, the kit                       (about 5 minutes)
#   bash scripts/gpu-run.sh bench   copy speed, the transfer pipeline, loading weights (8 GiB,
#                                   cached and cold), small operations, beside the peers (about 7)
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
case "${1:-tests}" in
tests)
  {
    log "machine"; date -u; nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,memory.free --format=csv
    python3 -c 'from exo_gpu_vulkan.backend import probe; print("vulkan probe:", probe() or "ok")'
    log "exo-gpu plugins / devices / info"
    python3 -m exo_gpu_plugins.cli plugins
    python3 -m exo_gpu_plugins.cli devices
    python3 -m exo_gpu_plugins.cli devices --json
    python3 -m exo_gpu_plugins.cli info vulkan:0
    log "device truth vs nvidia-smi"
    python3 benchmarks/device_truth.py --strict; echo "device_truth exit $?"
  } 2>&1 | tee "$OUT/devices.txt"
  {
    log "pytest: whole suite, validation on"
    EXO_VULKAN_VALIDATION=1 EXO_GPU_REQUIRE_VULKAN=1 timeout 330 python3 -m pytest tests -q -p no:cacheprovider -x 2>&1 | tail -30
    log "exo-gpu check vulkan (validation on)"
    EXO_VULKAN_VALIDATION=1 timeout 120 python3 -m exo_gpu_plugins.cli check vulkan
  } 2>&1 | tee "$OUT/tests.txt"
  ;;
bench)
  {
    log "copy speed, this project beside the peers (exo-gpu bench)"
    timeout 150 python3 -m exo_gpu_plugins.cli bench
    log "transfer pipeline beside the peers"
    timeout 200 python3 benchmarks/transfer_pipeline.py --backend vulkan --json "$OUT/pipeline.json"
    log "small operations: engine alone versus the async API"
    timeout 60 python3 benchmarks/small_ops_profile.py --backend vulkan
  } 2>&1 | tee "$OUT/bench.txt"
  {
    log "weights: 8 GiB safetensors, cached and cold, beside torch and fastsafetensors"
    timeout 300 python3 benchmarks/load_weights.py --backend vulkan --size 8G --dir /tmp --json "$OUT/load.json"
  } 2>&1 | tee "$OUT/load.txt"
  ;;
*) echo "usage: scripts/gpu-run.sh tests|bench" >&2; exit 2 ;;
esac
