"""A safetensors checkpoint into `dict[str, torch.Tensor]` on a CUDA device, beside the peers, in
one run: from the page cache and from tmpfs.

    python benchmarks/load_to_torch.py [--size 8G] [--path CHECKPOINT] [--dir DIR] [--tmpfs DIR]
                                       [--repeat 3] [--json OUT]

Loaders, each in a fresh process per reading, every loader once per round (rounds interleave, so
all see the same machine):
- ours: `load_weights(backend, "vulkan:0", path, exportable=True)` then `loaded.to_torch(backend)`:
  tensors viewing the Vulkan memory through CUDA's external-memory import, no copy;
- torch: `safetensors.torch.load_file(path, device="cuda")`;
- fastsafetensors (nogds): `SafeTensorsFileLoader(...).copy_files_to_device()` and every tensor;
- InstantTensor: `safe_open(files, framework="pt", device=0)` and every tensor, with
  `INSTANTTENSOR_BACKEND=BUFFERED` for a page-cached file (its default direct I/O reads at the
  disk's rate even when the file is cached) and its default (MMAP) on tmpfs.
Each reading is file -> every tensor on the GPU, `torch.cuda.synchronize()` included; GB/s is
10^9 tensor bytes per second. "GPU +GiB" is the device's peak memory in use during the
process's first load (sampled every millisecond through NVML, or `cudaMemGetInfo` without it, so
Vulkan's memory counts too) above what it was just before (ours times a second load, after a
warm-up; the driver keeps memory freed by the first for reuse). Ours is also checked: every
tensor bit-equal to `load_file`'s, and a torch in-place write read back by `copy_from_device`
(the storage is the loaded memory).
Needs a CUDA device that imports Vulkan memory (an NVIDIA GPU); elsewhere it says why and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from load_weights import GIB, child_result, data_files, parse_size, warm

LOADERS = ("ours", "torch", "fastsafetensors", "instanttensor")


def device_used() -> tuple[Any, str]:
    """A reader of CUDA device 0's memory in use, device-wide (Vulkan's allocations too), and its
    source: NVML where it loads (what nvidia-smi shows), else cudaMemGetInfo."""
    import torch

    try:
        import pynvml

        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(0).uuid)
        handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        return (lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)), "NVML"
    except Exception:  # no NVML here: the CUDA runtime's figure
        info = torch.cuda.mem_get_info
        return (lambda: int(info()[1] - info()[0])), "cudaMemGetInfo"


class GpuPeak:
    """The device's memory in use, sampled every millisecond in a thread: `peak_growth()` is the
    highest reading above the one taken at the start."""

    def __init__(self) -> None:
        gc.collect()
        self._read, self.source = device_used()
        self.base = self._read()
        self._peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self._peak = max(self._peak, self._read())

    def peak_growth(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self._peak, self._read()) - self.base


# ------------------------------------------------------------------------------------------------
# Children: one loader, one timed load, one JSON line


async def child_ours(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    import exo_gpu_plugins
    from exo_gpu_plugins.weights import load_weights

    backend = await exo_gpu_plugins.open_backend("vulkan")
    try:
        device = backend.list_devices()[0].device_id
        paths = spec["paths"]
        # The process's first load, which also warms the engine and the CUDA import up: its peak
        # device memory above what the process held before is the figure a user sees (the
        # driver keeps freed memory for reuse, so a second load in the process shows none).
        first = GpuPeak()
        warmup = await load_weights(backend, device, paths, exportable=True)
        tensors = await warmup.to_torch(backend)
        torch.cuda.synchronize()
        first_growth = first.peak_growth()
        del tensors
        await warmup.deallocate(backend)
        torch.cuda.synchronize()
        peak = GpuPeak()
        start = time.perf_counter()
        loaded = await load_weights(backend, device, paths, exportable=True)
        loaded_at = time.perf_counter()
        tensors = await loaded.to_torch(backend)
        torch.cuda.synchronize()
        done = time.perf_counter()
        result: dict[str, Any] = {
            "bytes": loaded.total_bytes,
            "times": [done - start],
            "load_s": loaded_at - start,
            "to_torch_s": done - loaded_at,
            "gpu_growth": first_growth,
            "gpu_growth_second_load": peak.peak_growth(),
            "gpu_source": peak.source,
            "tensors": len(tensors),
            "allocations": len(loaded.handles),
            "on": str(next(iter(tensors.values())).device),
        }
        if spec["verify"]:
            result.update(await verify(backend, loaded, tensors, spec["files"]))
        del tensors
        await loaded.deallocate(backend)
        return result
    finally:
        await backend.shutdown()


async def verify(backend: Any, loaded: Any, tensors: dict[str, Any], files: list[str]) -> dict[str, Any]:
    """Every tensor bit-equal to load_file's, and a torch write seen by copy_from_device."""
    import torch
    from safetensors.torch import load_file

    differ: list[str] = []
    for path in files:
        for name, expected in load_file(path, device="cuda").items():
            mine = tensors[name]
            same_kind = mine.dtype == expected.dtype and mine.shape == expected.shape
            if not (same_kind and torch.equal(mine.view(torch.uint8), expected.view(torch.uint8))):
                differ.append(name)
            del expected
        torch.cuda.empty_cache()
    name = max(loaded.tensors, key=lambda n: loaded.tensors[n].size_bytes)
    entry = loaded.tensors[name]
    tensors[name].view(torch.uint8).fill_(0x5A)
    torch.cuda.synchronize()
    back = await backend.copy_from_device(entry.handle, entry.offset_bytes, entry.size_bytes)
    return {
        "exact": not differ and len(tensors) == len(loaded.tensors),
        "differ": differ[:5],
        "inplace": back == b"\x5a" * entry.size_bytes,
    }


def timed_peer(load: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A peer's load of every tensor onto cuda:0 (after CUDA's own start), timed, with the
    device's peak memory during it."""
    import torch

    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    peak = GpuPeak()
    start = time.perf_counter()
    tensors = load()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    return {"bytes": total, "times": [seconds], "gpu_growth": peak.peak_growth()}


def child_torch(spec: dict[str, Any]) -> dict[str, Any]:
    from safetensors.torch import load_file

    def load() -> dict[str, Any]:
        tensors: dict[str, Any] = {}
        for path in spec["files"]:
            tensors.update(load_file(path, device="cuda"))
        return tensors

    return timed_peer(load)


def child_fastsafetensors(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from fastsafetensors import SafeTensorsFileLoader, SingleGroup

    loader = SafeTensorsFileLoader(SingleGroup(), torch.device("cuda:0"), nogds=True)
    opened: list[Any] = []

    def load() -> dict[str, Any]:
        loader.add_filenames({0: spec["files"]})
        opened.append(loader.copy_files_to_device())
        return {name: opened[0].get_tensor(name) for name in opened[0].key_to_rank_lidx}

    result = timed_peer(load)
    for buffer in opened:
        buffer.close()
    loader.close()
    return result


def child_instanttensor(spec: dict[str, Any]) -> dict[str, Any]:
    from instanttensor import safe_open

    def load() -> dict[str, Any]:
        with safe_open(spec["files"], framework="pt", device=0) as reader:
            return dict(reader.tensors())

    result = timed_peer(load)
    result["setting"] = os.environ.get("INSTANTTENSOR_BACKEND", "default")
    return result


# ------------------------------------------------------------------------------------------------
# The parent


def cuda_ready() -> str | None:
    """None when torch sees CUDA and our Vulkan device exports to it, else why not."""
    code = (
        "import asyncio, torch, exo_gpu_plugins\n"
        "async def m():\n"
        "    b = await exo_gpu_plugins.open_backend('vulkan')\n"
        "    kinds = b.capabilities(b.list_devices()[0].device_id).export_kinds\n"
        "    await b.shutdown()\n"
        "    print('ok' if torch.cuda.is_available() and 'cuda' in kinds else f'no: {kinds}')\n"
        "asyncio.run(m())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    lines = out.stdout.strip().splitlines()
    if lines and lines[-1] == "ok":
        return None
    return (lines[-1] if lines else (out.stderr.strip().splitlines() or ["?"])[-1]) or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=8 * GIB, help="synthetic size (8G)")
    parser.add_argument("--path", default=None, help="an existing checkpoint file or folder")
    parser.add_argument("--dir", default=None, help="where the page-cached copy lives (a disk)")
    parser.add_argument("--tmpfs", default="/dev/shm", help="a memory file system ('' to skip)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds (3: one slow reading cannot move a median)"
    )
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, spec = args.child[0], json.loads(args.child[1])
        result = asyncio.run(child_ours(spec)) if kind == "ours" else globals()[f"child_{kind}"](spec)
        print(json.dumps(result))
        return 0

    reason = cuda_ready()
    if reason is not None:
        print(f"load_to_torch needs CUDA importing Vulkan memory: {reason}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from exo_gpu_plugins.weights.synthetic import LlamaShape, write_llama

    made: list[Path] = []
    media: list[tuple[str, list[str]]] = []
    try:
        if args.path:
            source = [args.path]
        else:
            folder = Path(tempfile.mkdtemp(prefix="exo-torch-", dir=args.dir))
            made.append(folder)
            shape = LlamaShape.for_size(args.size)
            source = [str(write_llama(folder, shape, shards=1))]
        media.append(("page cache", source))
        if args.tmpfs:
            shm = Path(tempfile.mkdtemp(prefix="exo-torch-", dir=args.tmpfs))
            made.append(shm)
            copies = [str(shutil.copy(path, shm)) for path in data_files(source)]
            media.append(("tmpfs", copies))
        available = {
            "ours": True,
            "torch": importlib.util.find_spec("safetensors") is not None,
            "fastsafetensors": importlib.util.find_spec("fastsafetensors") is not None,
            "instanttensor": importlib.util.find_spec("instanttensor") is not None,
        }
        rows = []
        for medium, paths in media:
            files = data_files(paths)
            readings: dict[str, list[dict[str, Any]]] = {kind: [] for kind in LOADERS}
            for round_number in range(args.repeat):
                for kind in LOADERS:
                    if not available[kind]:
                        continue
                    env = {}
                    if kind == "instanttensor" and medium == "page cache":
                        env["INSTANTTENSOR_BACKEND"] = "BUFFERED"
                    warm(files)
                    spec = {
                        "paths": paths,
                        "files": files,
                        "verify": kind == "ours" and round_number == 0,
                    }
                    reading = child_result(kind, spec, 600, script=__file__, env=env)
                    readings[kind].append(reading)
                    shown = (
                        reading.get("error")
                        or f"{reading['bytes'] / reading['times'][0] / 1e9:.2f} GB/s"
                    )
                    print(f"  {medium} {kind}: {shown}", file=sys.stderr, flush=True)
            for kind in LOADERS:
                if available[kind]:
                    rows.append(summarize(kind, medium, readings[kind]))
    finally:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)
    report(rows, args)
    return 0


def summarize(kind: str, medium: str, readings: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [r["error"] for r in readings if "error" in r]
    if errors:
        return {"loader": kind, "medium": medium, "error": errors[0]}
    rates = [r["bytes"] / r["times"][0] / 1e9 for r in readings]
    for part in ("load_s", "to_torch_s"):
        if all(part in r for r in readings):
            readings[0][f"median_{part}"] = statistics.median(r[part] for r in readings)
    row: dict[str, Any] = {
        "loader": kind,
        "medium": medium,
        "bytes": readings[0]["bytes"],
        "gbps": statistics.median(rates),
        "best_gbps": max(rates),
        "gpu_growth": max(r["gpu_growth"] for r in readings),
        "readings": readings,
    }
    for key in ("exact", "inplace", "differ", "on", "setting", "gpu_source"):
        found = [r[key] for r in readings if key in r]
        if found:
            row[key] = found[0]
    return row


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\n{'loader':<16} {'medium':<11} {'GiB':>6} {'GB/s':>7} {'best':>7} {'GPU +GiB':>9}  checks")
    for row in rows:
        if "error" in row:
            print(f"{row['loader']:<16} {row['medium']:<11} could not run: {row['error']}")
            continue
        checks = ""
        if "exact" in row:
            first = row["readings"][0]
            checks = f"equal to load_file: {'yes' if row['exact'] else 'NO'}; "
            checks += f"in-place write read back: {'yes' if row['inplace'] else 'NO'}; on {row['on']}; "
            checks += f"load_weights {first['median_load_s']:.3f} s + to_torch "
            checks += f"{first['median_to_torch_s']:.3f} s; memory by {row['gpu_source']}"
        if "setting" in row:
            checks = f"INSTANTTENSOR_BACKEND={row['setting']}"
        print(
            f"{row['loader']:<16} {row['medium']:<11} {row['bytes'] / GIB:>6.2f} {row['gbps']:>7.2f} "
            f"{row['best_gbps']:>7.2f} {row['gpu_growth'] / GIB:>9.2f}  {checks}"
        )
    print("\ntargets (medians of this run):")
    verdicts = []
    for medium in sorted({row["medium"] for row in rows}):
        here = {row["loader"]: row for row in rows if row["medium"] == medium and "error" not in row}
        ours = here.get("ours")
        peers = {k: v["gbps"] for k, v in here.items() if k != "ours"}
        if ours is None or not peers:
            verdicts.append(f"  {medium}: not measured (ours or every peer missing)")
            continue
        best = max(peers, key=lambda k: peers[k])
        ratio = ours["gbps"] / peers[best]
        verdicts.append(
            f"  {medium}: ours {ours['gbps']:.2f} GB/s / fastest peer ({best}) {peers[best]:.2f} = "
            f"{ratio:.2f}x (target >= 1.0) {'meets' if ratio >= 1.0 else 'MISSES'}"
        )
        limit = ours["bytes"] + GIB
        verdicts.append(
            f"  {medium}: peak GPU memory in use {ours['gpu_growth'] / GIB:.2f} GiB for "
            f"{ours['bytes'] / GIB:.2f} GiB of tensors (target <= +1 GiB) "
            f"{'meets' if ours['gpu_growth'] <= limit else 'MISSES'}"
        )
    for line in verdicts:
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "verdicts": verdicts}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
