#!/usr/bin/env bash
# One run on the NVIDIA GPU machine (docs/gpu-testing.md): unpack the carried Vulkan loader and
# wheels, then one part, writing its tables under $OUT:
#   bash scripts/gpu-run.sh tests   devices, device truth against nvidia-smi, the whole suite with
#                                   validation                                 (about 4 minutes)
#   bash scripts/gpu-run.sh bench   the transfer pipeline beside the peers, then each queue's own
#                                   DMA rate and the copy kernels' own rates (.whl/queue_probe and
#                                   .whl/copy_probe, when carried; the latter also across
#                                   PCIe, host memory on one side)             (about 3 minutes)
#   bash scripts/gpu-run.sh load    loading weights: 8 GiB cached and cold beside torch and
#                                   fastsafetensors, 1 file against 4 shards  (about 5 minutes)
#   bash scripts/gpu-run.sh torch   a checkpoint into torch tensors on CUDA (interop), 8 GiB from
#                                   the page cache and tmpfs beside torch, fastsafetensors and
#                                   InstantTensor                              (about 5 minutes)
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
    EXO_VULKAN_VALIDATION=1 EXO_GPU_REQUIRE_VULKAN=1 EXO_GPU_REQUIRE_CUDA=1 timeout ${SUITE_TIMEOUT:-300} python3 -m pytest tests -q -p no:cacheprovider 2>&1 | tail -30
  } 2>&1 | tee "$OUT/tests.txt"
  ;;
bench)
  {
    log "transfer pipeline beside the peers"
    timeout 200 python3 benchmarks/transfer_pipeline.py --backend vulkan --json "$OUT/pipeline.json"
    if [ -x .whl/queue_probe ] && [ -x .whl/copy_probe ]; then
      log "the device's own ceilings: queues' DMA, copy kernels, PCIe (benchmarks/probes.py)"
      timeout 360 python3 benchmarks/probes.py --mib 1024 --binaries .whl
    fi
  } 2>&1 | tee "$OUT/bench.txt"
  ;;
load)
  {
    log "weights: an 8 GiB safetensors file, cached and cold, beside torch and fastsafetensors"
    python3 -c 'import sys; from exo_gpu_plugins.weights.synthetic import LlamaShape, write_llama; print(write_llama(sys.argv[1], LlamaShape.for_size(8 << 30), shards=1))' /tmp/ckpt8
    timeout 300 python3 benchmarks/load_weights.py --backend vulkan --path /tmp/ckpt8 --repeat 2 --json "$OUT/load8.json"
    log "weights: one file against 4 shards (2 GiB each, cached)"
    timeout 120 python3 benchmarks/load_weights.py --backend vulkan --size 2G --no-cold --repeat 2 --dir /tmp --json "$OUT/load2.json"
  } 2>&1 | tee "$OUT/load.txt"
  ;;
torch)
  {
    log "interop: a checkpoint into dict[str, torch.Tensor] on CUDA, beside the peers"
    (cd benchmarks && timeout ${TORCH_TIMEOUT:-420} python3 load_to_torch.py --size ${TORCH_SIZE:-8G} \
      --dir /tmp --repeat ${TORCH_REPEAT:-3} --json "$OUT/torch.json")
  } 2>&1 | tee "$OUT/torch.txt"
  ;;
*) echo "usage: scripts/gpu-run.sh tests|bench|load|torch" >&2; exit 2 ;;
esac
