"""A short check of the staged upload and file paths on a discrete GPU: host -> device from
ordinary (numpy) memory at 256 MiB and 1 GiB, and `copy_file_to_device` of a cached 2 GiB file,
each beside torch's pinned copy of the same size in the same run (when torch has CUDA).

    python benchmarks/upload_check.py [--file-gib 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time

import numpy as np

import exo_gpu_plugins


def torch_pinned(nbytes: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    src = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    times = []
    for _ in range(5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return nbytes / statistics.median(times) / 1e9


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file-gib", type=float, default=2.0)
    args = parser.parse_args()
    backend = await exo_gpu_plugins.open_backend("vulkan")
    device = backend.list_devices()[0].device_id
    print(f"{'figure':40} {'ours GB/s':>10} {'torch pinned':>13}")
    for size in (256 << 20, 1 << 30):
        src = np.random.default_rng(1).integers(0, 255, size, dtype=np.uint8)
        handle = await backend.allocate(device, size)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            await backend.copy_to_device(src, handle)
            times.append(time.perf_counter() - start)
        back = np.empty_like(src)
        await backend.copy_from_device_into(handle, 0, back)
        assert (back == src).all(), "bytes differ"
        await backend.deallocate(handle)
        peer = torch_pinned(size)
        ours = size / statistics.median(times) / 1e9
        print(f"{f'host->device {size >> 20} MiB (numpy)':40} {ours:10.2f} {peer or float('nan'):13.2f}")
    size = int(args.file_gib * (1 << 30))
    with tempfile.NamedTemporaryFile(dir="/tmp", delete=False) as f:
        block = os.urandom(1 << 24)
        for _ in range(size // len(block)):
            f.write(block)
        path = f.name
    try:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
        handle = await backend.allocate(device, size)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            await backend.copy_file_to_device(path, handle)
            times.append(time.perf_counter() - start)
        check = await backend.copy_from_device(handle, size - len(block), len(block))
        assert check == block, "file bytes differ"
        ours = size / statistics.median(times) / 1e9
        print(f"{f'copy_file_to_device {size >> 20} MiB (cached)':40} {ours:10.2f} {'':>13}")
    finally:
        os.unlink(path)
    await backend.shutdown()


asyncio.run(main())
