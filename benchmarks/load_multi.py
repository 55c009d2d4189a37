"""One checkpoint over every device of a node (`load_across`) against each device alone, and the
host's memory bandwidth, all measured in the same run.

    python benchmarks/load_multi.py [--devices vulkan:0,vulkan:1] [--size 8G] [--repeat 3]
                                    [--path CHECKPOINT] [--dir DIR] [--json OUT]

`--size` is per device (default 8 GiB on a GPU, 64 MiB where a device is the CPU: lavapipe,
host). Without `--path`, a Llama-shaped checkpoint of size x N is written (4 shards per device,
with an index) and removed afterwards unless `--keep`. The files are read once before timing, so
every load reads from the page cache. `--devices` defaults to every Vulkan device when there are
two or more, else `vulkan:0,host:0`.

Rows (median of `--repeat`; GB/s is 10^9 bytes delivered to devices per second):
- `alone <device>`: that device's part of the placement (the same layers), loaded by
  `load_weights` with no other device busy;
- `load_across`: the whole checkpoint over all devices at once;
- `page cache read`: the checkpoint's files read into one preallocated buffer by as many threads
  as cores (`os.preadv`): the host memory bandwidth a load from the page cache can use;
- `memcpy` (numpy, when importable): a large host-to-host copy on as many threads.
The verdict compares `load_across` with the bound that applies: N x the first device's alone rate
(the issue's figure), the parallel ideal (total bytes over the slowest device's alone time), or
the host bandwidth, whichever is lowest; the target is 90 % of it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exo_gpu_plugins.registry import get_registry
from exo_gpu_plugins.sizes import format_bytes, parse_size
from exo_gpu_plugins.weights import load_placement, load_weights, plan_across
from exo_gpu_plugins.weights.synthetic import LlamaShape, write_llama

GB = 1e9


async def open_backends(devices: list[str]) -> dict[str, Any]:
    backends: dict[str, Any] = {}
    for device in devices:
        name = device.partition(":")[0]
        if name not in backends:
            backend = get_registry().entry(name, "--devices").load_class()()
            await backend.initialize()
            backends[name] = backend
    return backends


def default_devices() -> list[str]:
    try:
        from exo_gpu_vulkan.backend import VulkanBackend
    except ImportError:
        return ["host:0"]

    async def listed() -> list[str]:
        backend = VulkanBackend()
        await backend.initialize()
        try:
            return [d.device_id for d in backend.list_devices()]
        finally:
            await backend.shutdown()

    found = asyncio.run(listed())
    return found if len(found) >= 2 else ["vulkan:0", "host:0"]


def page_cache_read(files: list[str], threads: int) -> float:
    """Seconds to read every file into one buffer with `threads` parallel preadv's."""
    sizes = [os.path.getsize(f) for f in files]
    buffer = memoryview(bytearray(sum(sizes)))
    jobs: list[tuple[int, int, int]] = []  # fd, file offset, buffer offset
    fds = [os.open(f, os.O_RDONLY) for f in files]
    chunk = 64 << 20
    base = 0
    for fd, size in zip(fds, sizes, strict=True):
        jobs.extend((fd, at, base + at) for at in range(0, size, chunk))
        base += size
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not jobs:
                    return
                fd, at, to = jobs.pop()
            end = min(to + chunk, len(buffer))
            os.preadv(fd, [buffer[to:end]], at)

    seconds = threads_seconds([worker] * threads)
    for fd in fds:
        os.close(fd)
    return seconds


def threads_seconds(work: list[Callable[[], None]]) -> float:
    """Wall time of running each of `work` in a thread of its own, all at once."""
    started = time.perf_counter()
    pool = [threading.Thread(target=task) for task in work]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return time.perf_counter() - started


def memcpy_rate(size: int, threads: int) -> float | None:
    """GB/s of a host-to-host copy of `size` bytes split over `threads` (numpy releases the GIL)."""
    try:
        import numpy as np
    except ImportError:
        return None
    source = np.ones(size, dtype=np.uint8)
    target = np.empty_like(source)
    part = -(-size // threads)

    def copy(index: int) -> None:
        np.copyto(target[index * part : (index + 1) * part], source[index * part : (index + 1) * part])

    copy(0)
    return size / threads_seconds([functools.partial(copy, i) for i in range(threads)]) / GB


async def measure(args: argparse.Namespace, path: Path, devices: list[str]) -> dict[str, Any]:
    backends = await open_backends(devices)
    pairs = [(backends[d.partition(":")[0]], d) for d in devices]
    try:
        placement = await plan_across(pairs, path)
        placement.check_fits()
        rows: list[dict[str, Any]] = []
        for part, (backend, device) in zip(placement.devices, pairs, strict=True):
            times = []
            for _ in range(args.repeat):
                loaded = await load_weights(backend, device, path, layers=part.layers)
                times.append(loaded.seconds)
                await loaded.deallocate(backend)
            seconds = statistics.median(times)
            rows.append(
                {
                    "what": f"alone {device} (layers {part.layers.start}:{part.layers.end})",
                    "bytes": part.total_bytes,
                    "seconds": seconds,
                    "gb_per_s": part.total_bytes / seconds / GB,
                }
            )
        times = []
        for _ in range(args.repeat):
            placed = await load_placement(pairs, placement)
            times.append(placed.seconds)
            await placed.deallocate(pairs)
        seconds = statistics.median(times)
        across = placement.delivered_bytes / seconds / GB
        rows.append(
            {
                "what": f"load_across {','.join(devices)}",
                "bytes": placement.delivered_bytes,
                "seconds": seconds,
                "gb_per_s": across,
            }
        )
    finally:
        for backend in backends.values():
            await backend.shutdown()
    files = list(placement.files)
    threads = os.cpu_count() or 1
    cache_seconds = statistics.median(page_cache_read(files, threads) for _ in range(args.repeat))
    file_bytes = sum(os.path.getsize(f) for f in files)
    host = file_bytes / cache_seconds / GB
    rows.append(
        {
            "what": f"page cache read ({threads} threads)",
            "bytes": file_bytes,
            "seconds": cache_seconds,
            "gb_per_s": host,
        }
    )
    memcpy = memcpy_rate(min(file_bytes, 1 << 30), threads)
    if memcpy is not None:
        rows.append(
            {
                "what": f"memcpy ({threads} threads)",
                "bytes": min(file_bytes, 1 << 30),
                "seconds": None,
                "gb_per_s": memcpy,
            }
        )
    alone = rows[: len(devices)]
    bounds = {
        "N x first device alone": len(devices) * alone[0]["gb_per_s"],
        "parallel ideal (slowest device alone)": placement.delivered_bytes
        / max(r["seconds"] for r in alone)
        / GB,
        "host bandwidth (page cache read)": host,
    }
    applied = min(bounds, key=lambda key: bounds[key])
    return {
        "devices": devices,
        "checkpoint_bytes": file_bytes,
        "rows": rows,
        "bounds": bounds,
        "bound_applied": applied,
        "ratio": across / bounds[applied],
        "meets_target": across >= 0.9 * bounds[applied],
    }


def model_shape(total: int, devices: int) -> LlamaShape:
    """TinyLlama-wide where that gives every device 4 layers or more, else narrower (small runs)."""
    wide = LlamaShape.for_size(total)
    if wide.layers >= 4 * devices:
        return wide
    narrow = LlamaShape(layers=0, hidden=1024, kv_hidden=256, intermediate=2816, vocab=8000)
    per_layer = LlamaShape(layers=1, hidden=1024, kv_hidden=256, intermediate=2816, vocab=8000).nbytes
    layers = max(4 * devices, round((total - narrow.nbytes) / (per_layer - narrow.nbytes)))
    return LlamaShape(layers=layers, hidden=1024, kv_hidden=256, intermediate=2816, vocab=8000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", help="comma-separated device ids (default: see above)")
    parser.add_argument("--size", help="checkpoint bytes per device (default 8G on a GPU, 64M on a CPU)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--path", help="an existing checkpoint instead of a synthetic one")
    parser.add_argument("--dir", help="where to write the synthetic checkpoint")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    devices = args.devices.split(",") if args.devices else default_devices()
    cpu_like = any(d.startswith("host") for d in devices) or "llvmpipe" in os.environ.get(
        "EXO_BENCH_DEVICE", ""
    )
    size = parse_size(args.size) if args.size else (64 << 20 if cpu_like else 8 << 30)
    folder = Path(tempfile.mkdtemp(prefix="load-multi-", dir=args.dir))
    try:
        if args.path:
            path = Path(args.path)
        else:
            shape = model_shape(size * len(devices), len(devices))
            path = write_llama(folder, shape, shards=4 * len(devices))
        for file in (
            sorted(path.parent.glob("*.safetensors"))
            if path.is_file()
            else sorted(path.glob("*.safetensors"))
        ):
            with open(file, "rb") as handle:  # into the page cache
                while handle.read(64 << 20):
                    pass
        result = asyncio.run(measure(args, path, devices))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"{'what':<48} {'bytes':>10} {'seconds':>8} {'GB/s':>7}")
    for row in result["rows"]:
        seconds = "-" if row["seconds"] is None else f"{row['seconds']:.3f}"
        print(f"{row['what']:<48} {format_bytes(row['bytes']):>10} {seconds:>8} {row['gb_per_s']:>7.2f}")
    print()
    for name, value in result["bounds"].items():
        mark = "  <- applies" if name == result["bound_applied"] else ""
        print(f"bound: {name:<40} {value:7.2f} GB/s{mark}")
    verdict = "meets" if result["meets_target"] else "misses"
    print(
        f"load_across reaches {result['ratio']:.0%} of the bound that applies "
        f"({verdict} the 90 % target)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
