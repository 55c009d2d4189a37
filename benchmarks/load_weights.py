"""Loading safetensors weights into device memory, cached and cold, beside the peers in one run.

    python benchmarks/load_weights.py [--size 8G] [--backend vulkan] [--device vulkan:0]
                                      [--path FILE_OR_FOLDER] [--dir DIR] [--repeat 3] [--json OUT]

Without `--path` it writes a Llama-shaped synthetic checkpoint of `--size` bytes (one file) and
the same model in 4 shards with an index, and removes them afterwards unless `--keep`. Default
size: 8 GiB on a GPU, 1 GiB on a CPU device (lavapipe) or the host backend.

Rows (each measurement in a fresh process, so peak RSS is its own):
- `load_weights`, cached (after one warm read of the files) and cold (each file fsync'ed and
  evicted with posix_fadvise(POSIX_FADV_DONTNEED) before every timed load); cold readings are
  taken in rounds (ours, each peer, the disk's rate; one load each) so that all of a round see
  the same disk;
- numpy: the same bytes read from the page cache into a preallocated numpy array (`readinto`),
  in the same process as the cached load and timed in turn with it, and `numpy.fromfile`
  (allocation included);
- torch's `safetensors.torch.load_file(device="cuda")` and fastsafetensors (nogds), when
  importable and CUDA is present, cached and cold;
- the two halves of a cached load timed apart (allocating; copy_file_to_device into memory
  allocated beforehand), to show where the time goes;
- the disk's own rate: N threads reading the files with O_DIRECT into page-aligned buffers,
  the limit for a cold load.
GB/s is 10^9 bytes per second of tensor data. RSS growth is the process's lifetime peak after
the timed loads minus its RSS just before them (an upper bound on what one load adds); on a
unified-memory device (lavapipe, host) the device memory itself is process RSS, so the table shows
the growth beyond the bytes allocated.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import mmap
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

GIB = 1 << 30
MIB = 1 << 20


# ------------------------------------------------------------------------------------------------
# Helpers shared by the parent and the children


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": MIB, "G": GIB, "T": 1 << 40}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def data_files(paths: list[str]) -> list[str]:
    from exo_gpu_plugins.weights import plan_checkpoint

    return list(plan_checkpoint(paths).files)


def evict(files: list[str]) -> None:
    """Drop the files' pages from the page cache (written back first, so they can be dropped)."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(files: list[str]) -> None:
    """Read every byte once so the files are in the page cache."""
    buffer = bytearray(16 * MIB)
    for path in files:
        with open(path, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass


def rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def fs_type(path: str) -> str | None:
    """The file system holding `path` (from /proc/mounts, longest matching mount point)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return None
    real = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for fields in mounts:
        point, kind = fields[1], fields[2]
        if (real == point or real.startswith(point.rstrip("/") + "/")) and (
            best is None or len(point) > best[0]
        ):
            best = (len(point), kind)
    return best[1] if best else None


# ------------------------------------------------------------------------------------------------
# Children: one measurement each, one JSON line on stdout


async def child_load(spec: dict[str, Any]) -> dict[str, Any]:
    import exo_gpu_plugins
    from exo_gpu_plugins.weights import load_weights

    backend = await exo_gpu_plugins.open_backend(spec["backend"])
    try:
        device = spec["device"] or backend.list_devices()[0].device_id
        paths, files = spec["paths"], spec["files"]
        # The peer's array first, then a warm-up load (engine start-up; in a VM, also the first
        # touch of guest memory, several times slower than later ones): the timed loads then
        # reuse the warm-up's pages, as the peer reuses its array. The array is in `before`.
        numpy = NumpyPeer(files) if spec["numpy"] else None
        warmup = await load_weights(backend, device, paths, pack=spec["pack"])
        await warmup.deallocate(backend)
        times: list[float] = []
        before = rss()
        loaded = None
        for _ in range(spec["repeat"]):
            if spec["cold"]:
                evict(files)
            if loaded is not None:
                await loaded.deallocate(backend)
            start = time.perf_counter()
            loaded = await load_weights(backend, device, paths, pack=spec["pack"])
            times.append(time.perf_counter() - start)
            if numpy is not None:
                numpy.readinto()  # in turn with our loads: both see the same machine
        peak = peak_rss()
        assert loaded is not None
        result: dict[str, Any] = {
            "bytes": loaded.total_bytes,
            "allocations": len(loaded.handles),
            "tensors": len(loaded.tensors),
            "times": times,
            "rss_growth": max(0, peak - before),
            "allocated": loaded.allocated_bytes,
            "unified": backend.capabilities(device).unified_memory,
            "device": backend.get_device(device).name,  # type: ignore[union-attr]
            "strategy": backend.capabilities(device).transfer_strategy,
            "native_file_copy": getattr(backend.capabilities(device), "native_file_copy", None),
        }
        result["exact"] = not await loaded.verify(backend) if spec["verify"] else None
        await loaded.deallocate(backend)
        if numpy is not None:
            result["numpy"] = numpy.results(spec["repeat"])
            del numpy
            result["parts"] = await parts(backend, device, files, spec["repeat"])
        return result
    finally:
        await backend.shutdown()


async def parts(backend: Any, device: str, files: list[str], repeat: int) -> dict[str, Any]:
    """The two halves of a load, timed apart: allocating the files' data sections (not zeroed,
    as a full load does: its copies overwrite every byte), and copy_file_to_device of each data
    section into an allocation made beforehand."""
    ranges = tensor_ranges(files)
    allocate: list[float] = []
    copy: list[float] = []
    for _ in range(repeat):
        start = time.perf_counter()
        handles = [await backend.allocate(device, size, zeroed=False) for _, _, size in ranges]
        allocate.append(time.perf_counter() - start)
        start = time.perf_counter()
        for handle, (path, offset, size) in zip(handles, ranges, strict=True):
            await backend.copy_file_to_device(path, handle, 0, file_offset=offset, size_bytes=size)
        copy.append(time.perf_counter() - start)
        for handle in handles:
            await backend.deallocate(handle)
    return {"bytes": sum(size for _, _, size in ranges), "allocate": allocate, "copy": copy}


def tensor_ranges(files: list[str]) -> list[tuple[str, int, int]]:
    """(file, offset, size) of each file's whole data section: the bytes a full load copies."""
    from exo_gpu_plugins.weights.format import read_header

    ranges = []
    for path in files:
        header = read_header(path)
        ranges.append((path, header.data_start, header.file_size - header.data_start))
    return ranges


class NumpyPeer:
    """The same bytes from the page cache into numpy: `readinto` a preallocated array, touched
    beforehand so that no page fault falls inside the timing (the strict peer), and
    `numpy.fromfile` (allocation included)."""

    def __init__(self, files: list[str]) -> None:
        import numpy as np

        self.ranges = tensor_ranges(files)
        self.total = sum(size for _, _, size in self.ranges)
        self.target = np.ones(self.total, dtype=np.uint8)
        self.times: list[float] = []

    def readinto(self) -> None:
        view = memoryview(self.target)
        start = time.perf_counter()
        position = 0
        for path, offset, size in self.ranges:
            fd = os.open(path, os.O_RDONLY)
            try:
                done = 0
                while done < size:
                    got = os.preadv(fd, [view[position + done : position + size]], offset + done)
                    if got <= 0:
                        raise OSError(f"{path}: short read")
                    done += got
            finally:
                os.close(fd)
            position += size
        self.times.append(time.perf_counter() - start)

    def results(self, repeat: int) -> dict[str, Any]:
        import numpy as np

        del self.target
        fromfile: list[float] = []
        for _ in range(repeat):
            start = time.perf_counter()
            arrays = [
                np.fromfile(path, dtype=np.uint8, count=size, offset=offset)
                for path, offset, size in self.ranges
            ]
            fromfile.append(time.perf_counter() - start)
            del arrays
        return {"bytes": self.total, "readinto": self.times, "fromfile": fromfile}


def child_torch(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    files = spec["files"]
    load_file(files[0], device="cuda")  # CUDA context and allocator warm-up
    torch.cuda.synchronize()
    times: list[float] = []
    before = rss()
    total = 0
    for _ in range(spec["repeat"]):
        if spec["cold"]:
            evict(files)
        start = time.perf_counter()
        loaded = [load_file(path, device="cuda") for path in files]
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        total = sum(t.numel() * t.element_size() for d in loaded for t in d.values())
        del loaded
        torch.cuda.empty_cache()
    return {"bytes": total, "times": times, "rss_growth": max(0, peak_rss() - before)}


def child_fastsafetensors(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from fastsafetensors import SafeTensorsFileLoader, SingleGroup

    files = spec["files"]
    times: list[float] = []
    before = None
    for attempt in range(spec["repeat"] + 1):  # the first is a warm-up
        if spec["cold"]:
            evict(files)
        if attempt == 1:
            before = rss()
        loader = SafeTensorsFileLoader(SingleGroup(), torch.device("cuda:0"), nogds=True)
        loader.add_filenames({0: files})
        start = time.perf_counter()
        buffer = loader.copy_files_to_device()
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if attempt:
            times.append(elapsed)
        buffer.close()
        loader.close()
        torch.cuda.empty_cache()
    total = sum(size for _, _, size in tensor_ranges(files))
    return {"bytes": total, "times": times, "rss_growth": max(0, peak_rss() - (before or 0))}


def direct_read(files: list[str], threads: int, block: int) -> dict[str, Any]:
    """The disk's parallel O_DIRECT read rate over the files (page-aligned buffers via mmap)."""
    evict(files)
    jobs: list[tuple[str, int]] = []
    for path in files:
        size = os.path.getsize(path)
        jobs += [(path, offset) for offset in range(0, size, block)]
    lock = threading.Lock()
    errors: list[str] = []
    done = [0]

    def worker() -> None:
        buffer = mmap.mmap(-1, block)
        descriptors: dict[str, int] = {}
        try:
            while True:
                with lock:
                    if not jobs:
                        return
                    path, offset = jobs.pop()
                fd = descriptors.get(path)
                if fd is None:
                    fd = descriptors[path] = os.open(path, os.O_RDONLY | os.O_DIRECT)
                got = os.preadv(fd, [buffer], offset)
                with lock:
                    done[0] += got
        except OSError as exc:
            errors.append(str(exc))
        finally:
            for fd in descriptors.values():
                os.close(fd)
            buffer.close()

    start = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        return {"error": errors[0]}
    return {"bytes": done[0], "times": [elapsed], "threads": threads, "block": block}


def run_child(kind: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    result = child_result(kind, spec, timeout)
    # One line per measurement as it ends, so a run cut short still shows what it measured.
    times = result.get("times") or []
    seconds = f"{statistics.median(times):.3f} s median" if times else result.get("error", "")
    print(
        f"  {kind}{' cold' if spec.get('cold') else ''}: {seconds} "
        f"({time.perf_counter() - started:.0f} s with set-up)",
        file=sys.stderr,
        flush=True,
    )
    return result


def child_result(
    kind: str,
    spec: dict[str, Any],
    timeout: float,
    script: str = __file__,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One measurement in a fresh process (`script --child KIND SPEC`): its JSON line, or an
    error row."""
    try:
        out = subprocess.run(
            [sys.executable, script, "--child", kind, json.dumps(spec)],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            env=None if env is None else {**os.environ, **env},
        )
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout:.0f} s"}
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {out.returncode}: {tail}"}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# ------------------------------------------------------------------------------------------------
# The parent


def describe(backend: str | None, device: str | None) -> dict[str, Any]:
    code = (
        "import asyncio, json, exo_gpu_plugins\n"
        "async def m(name, dev):\n"
        "    b = await exo_gpu_plugins.open_backend(name)\n"
        "    d = b.get_device(dev) if dev else b.list_devices()[0]\n"
        "    print(json.dumps({'backend': b.name, 'device': d.device_id, 'name': d.name,\n"
        "                      'type': d.device_type.value}))\n"
        "    await b.shutdown()\n"
        f"asyncio.run(m({backend!r}, {device!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def has_cuda_torch() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip().endswith("True")


def rate(result: dict[str, Any], key: str = "times") -> tuple[float | None, float | None]:
    """(median, best) GB/s."""
    times = result.get(key)
    if not times or "bytes" not in result:
        return None, None
    return result["bytes"] / statistics.median(times) / 1e9, result["bytes"] / min(times) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size",
        type=parse_size,
        default=None,
        help="e.g. 1G, 8G (default: 8G on a GPU, 1G on a CPU device)",
    )
    parser.add_argument("--backend", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--path", default=None, help="an existing checkpoint instead of synthetic files")
    parser.add_argument("--dir", default=None, help="where to write the synthetic files")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=16, help="O_DIRECT reader threads")
    parser.add_argument("--no-verify", action="store_true")
    parser.add_argument("--no-cold", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic files")
    parser.add_argument("--json", default=None, help="write every reading to this file")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, spec = args.child[0], json.loads(args.child[1])
        result = asyncio.run(child_load(spec)) if kind == "load" else globals()[f"child_{kind}"](spec)
        print(json.dumps(result))
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from exo_gpu_plugins.weights.synthetic import LlamaShape, write_llama

    info = describe(args.backend, args.device)
    cpu_like = info["type"] in ("cpu", "host")
    size = args.size or (GIB if cpu_like else 8 * GIB)
    made: Path | None = None
    checkpoints: list[tuple[str, list[str]]] = []
    if args.path:
        checkpoints.append(("given", [args.path]))
    else:
        made = Path(tempfile.mkdtemp(prefix="exo-gpu-load-", dir=args.dir))
        shape = LlamaShape.for_size(size)
        print(
            f"writing a {shape.nbytes / GIB:.2f} GiB Llama-shaped checkpoint ({shape.layers} layers) "
            f"as 1 file and as 4 shards under {made} ...",
            flush=True,
        )
        checkpoints.append(("1 file", [str(write_llama(made / "single", shape, shards=1))]))
        checkpoints.append(("4 shards", [str(write_llama(made / "sharded", shape, shards=4))]))
    cuda = has_cuda_torch()
    peers = [
        ("torch", cuda and importlib.util.find_spec("safetensors") is not None),
        ("fastsafetensors", cuda and importlib.util.find_spec("fastsafetensors") is not None),
    ]
    limit = 600.0
    rows: list[dict[str, Any]] = []
    fs_name: str | None = None
    try:
        for label, paths in checkpoints:
            files = data_files(paths)
            fs = fs_type(files[0])
            fs_name = fs_name or fs
            for cold in [False] if args.no_cold else [False, True]:
                cache = "cold" if cold else "cached"
                spec = {
                    "backend": info["backend"],
                    "device": info["device"],
                    "paths": paths,
                    "files": files,
                    "repeat": args.repeat,
                    "cold": cold,
                    "pack": "file",
                    "verify": not args.no_verify and not cold,
                    "numpy": not cold,
                }
                kinds = ["load"] + [name for name, ok in peers if ok]
                # Cold loads run at the disk's rate, which drifts from minute to minute on a
                # virtual disk: rounds of one load each (ours, each peer, the disk's own rate),
                # so that every reading of a round sees the same disk.
                rounds, per_child = (args.repeat, 1) if cold else (1, args.repeat)
                readings: list[dict[str, dict[str, Any]]] = []
                for _ in range(rounds):
                    reading = {}
                    for kind in kinds:
                        warm(files)
                        reading[kind] = run_child(kind, {**spec, "repeat": per_child}, limit)
                    if cold:
                        reading["disk"] = direct_read(files, args.threads, 16 * MIB)
                    readings.append(reading)
                results = {kind: merged([r[kind] for r in readings]) for kind in readings[0]}
                rows.extend(result_rows(results, label, cache, fs, args.threads))
    finally:
        if made is not None and not args.keep:
            shutil.rmtree(made, ignore_errors=True)

    print(
        f"\ndevice: {info['device']} {info['name']} ({info['type']}); checkpoint {size / GIB:.2f} GiB; "
        f"median of {args.repeat}; files on {fs_name}"
    )
    print(
        f"{'what':<30} {'checkpoint':<10} {'cache':<7} {'GiB':>6} {'median s':>9} {'GB/s':>7} "
        f"{'best GB/s':>9} {'RSS +MiB':>9} {'allocs':>6} exact"
    )
    for row in rows:
        med, best = rate(row)
        if "error" in row:
            head = f"{row['what']:<30} {row['checkpoint']:<10} {row['cache']:<7}"
            print(f"{head} could not run: {row['error']}")
            continue
        times = row.get("times") or [float("nan")]
        growth = extra_rss(row)
        print(
            f"{row['what']:<30} {row['checkpoint']:<10} {row['cache']:<7} {row['bytes'] / GIB:>6.2f} "
            f"{statistics.median(times):>9.3f} {med or 0:>7.2f} {best or 0:>9.2f} "
            f"{'' if growth is None else f'{growth / MIB:.1f}':>9} {row.get('allocations', ''):>6} "
            f"{'' if row.get('exact') is None else ('yes' if row['exact'] else 'NO')}"
        )
    verdicts = summarize(rows, cpu_like)
    for line in verdicts:
        print(line)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"device": info, "size": size, "rows": rows, "verdicts": verdicts}, indent=2)
        )
    return 0


def merged(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One reading from several children of one kind (rounds): their times together, the largest
    RSS growth, and the first error if any failed."""
    for result in results:
        if "error" in result:
            return result
    out = dict(results[0])
    out["times"] = [t for result in results for t in result["times"]]
    if "rss_growth" in out:
        out["rss_growth"] = max(result["rss_growth"] for result in results)
    return out


def result_rows(
    results: dict[str, dict[str, Any]], label: str, cache: str, fs: str | None, threads: int
) -> list[dict[str, Any]]:
    """The table's rows of one checkpoint and cache state, ours first."""
    where = {"checkpoint": label, "cache": cache}
    load = results["load"]
    rows = [{"what": "load_weights", **where, **load}]
    # Readings the load's own process took beside it: (its key, the figure's key, the row).
    beside = (
        ("parts", "allocate", "  part: allocate"),
        ("parts", "copy", "  part: copy_file_to_device"),
        ("numpy", "readinto", "numpy readinto (same process)"),
        ("numpy", "fromfile", "numpy.fromfile (same process)"),
    )
    for source, key, what in beside:
        if source in load:
            reading = load[source]
            rows.append({"what": what, **where, "bytes": reading["bytes"], "times": reading[key]})
    names = {"torch": "torch load_file(cuda)", "fastsafetensors": "fastsafetensors nogds"}
    for kind, what in names.items():
        if kind in results:
            rows.append({"what": what, **where, **results[kind]})
    if "disk" in results:
        rows.append({"what": f"disk O_DIRECT x{threads}", **where, "fs": fs, **results["disk"]})
    return rows


def extra_rss(row: dict[str, Any]) -> int | None:
    """RSS growth during the load, less the device memory itself where that is process memory."""
    growth = row.get("rss_growth")
    if growth is None:
        return None
    return int(max(0, growth - row["allocated"]) if row.get("unified") else growth)


def find(rows: list[dict[str, Any]], what: str, checkpoint: str, cache: str) -> float | None:
    for row in rows:
        if row["what"].startswith(what) and row["checkpoint"] == checkpoint and row["cache"] == cache:
            return rate(row)[0]
    return None


def summarize(rows: list[dict[str, Any]], cpu_like: bool) -> list[str]:
    """The issue's targets, as ratios of readings taken in this run (none where a peer is missing)."""
    lines = ["", "targets (median rates of this run):"]
    first = rows[0]["checkpoint"] if rows else "1 file"

    def line(label: str, value: float | None, target: float, unit: str = "x") -> None:
        if value is None:
            lines.append(f"  {label}: not measured")
        else:
            verdict = "meets" if value >= target else "MISSES"
            lines.append(f"  {label}: {value:.2f}{unit} (target >= {target}{unit}) {verdict}")

    load_cached = find(rows, "load_weights", first, "cached")
    load_cold = find(rows, "load_weights", first, "cold")
    numpy = find(rows, "numpy readinto", first, "cached")
    torch = find(rows, "torch", first, "cached")
    fst = find(rows, "fastsafetensors", first, "cold")
    disk = find(rows, "disk O_DIRECT", first, "cold")
    if cpu_like:
        line(
            "cached load / numpy readinto",
            None if not (load_cached and numpy) else load_cached / numpy,
            1.0,
        )
    else:
        line("cached load GB/s", load_cached, 50.0, " GB/s")
        line(
            "cached load / torch load_file",
            None if not (load_cached and torch) else load_cached / torch,
            6.0,
        )
        line(
            "cold load / fastsafetensors nogds",
            None if not (load_cold and fst) else load_cold / fst,
            1.0,
        )
    line("cold load / disk O_DIRECT", None if not (load_cold and disk) else load_cold / disk, 0.9)
    sharded = find(rows, "load_weights", "4 shards", "cached")
    if sharded and load_cached:
        line("4 shards / 1 file (cached; 'the same rate' read as >= 0.9)", sharded / load_cached, 0.9)
    growths = [g for r in rows if r["what"] == "load_weights" and (g := extra_rss(r)) is not None]
    if growths:
        worst = max(growths) / MIB
        lines.append(
            f"  peak RSS growth during a load: {worst:.1f} MiB (target < 128 MiB) "
            f"{'meets' if worst < 128 else 'MISSES'}"
        )
    exact = [r.get("exact") for r in rows if r["what"] == "load_weights" and r.get("exact") is not None]
    if exact:
        lines.append(f"  every byte verified: {'yes' if all(exact) else 'NO'}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
