"""Transfer-path sweep for the Vulkan engine (`exo_gpu_vulkan._native`): every variant (strategy +
`EXO_VULKAN_TUNE`, see rust/engine/src/tuning.rs) runs in its own process and prints one JSON line
of figures (GB/s per direction and size, microseconds for small operations, the bytes each path
carried); then, for each choice in CHOICES, the variant that beats the default by over 5%, and
FINAL_TUNE, the combination (also written to $FINAL_TUNE_FILE, default /tmp/final_tune). This is
how the engine's defaults were picked on an H100; run it on other hardware the same way:

    SWEEP_BUDGET=120 python3 benchmarks/transfer_sweep.py
    EXO_VULKAN_TUNE=$(cat /tmp/final_tune) python3 -m exo_gpu_plugins.cli bench --backend vulkan

Keys: wN/rN/rbN = write / read_into / read (new bytes) of N bytes, d2d1G = device copy of 1 GiB,
be_* = through the async backend; BAD* = bytes differed (expected only for `diag=` variants)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from exo_gpu_plugins.timing import median_seconds, median_seconds_async

MiB = 1 << 20
SIZES = [256 * MiB, 64 * MiB, 4 * MiB, 1 * MiB, 256 << 10, 64 << 10]

VARIANTS = [
    ("auto", ""),
    ("auto", "hybrid=30"),
    ("auto", "hybrid=50"),
    ("auto", "map_write=0"),
    ("auto", "map_write=max"),
    ("auto", "nt_min=0"),
    ("auto", "map_read=0"),
    ("auto", "fence_spin=0"),
    ("auto", "d2d_compute=0"),
    ("auto", "map_write=0,diag=nomemcpy"),
    ("auto", "map_write=0,diag=nodma"),
    ("auto", "threads=8"),
    ("auto", "spin=30"),
    ("auto", "slot=32m"),
    ("auto", "hybrid=30,map_write=16m"),
    ("auto", "hugepages=0"),
    ("staging", ""),
    ("import", ""),
]

# Choices made from the sweep: alternatives (first = default) and a score (higher is better); an
# alternative replaces the default only when it scores over 5% better.
Row = dict[str, Any]


def BULK(r: Row) -> float:
    return float(r.get("w256M", 0) + r.get("r256M", 0) + r.get("rb256M", 0))


def _fence(r: Row) -> float:
    return float(r.get("r256M", 0) + r.get("w64M", 0) + 100.0 / r.get("be_rt4k_us", 1e9))


CHOICES: list[tuple[list[str], Callable[[Row], float]]] = [
    (
        ["", "hybrid=30", "hybrid=50", "map_write=0", "map_write=max", "hybrid=30,map_write=16m"],
        lambda r: r.get("w256M", 0) + 0.5 * r.get("w64M", 0),
    ),
    (["", "nt_min=0"], BULK),
    (["", "map_read=0"], lambda r: 1000.0 / r.get("be_rt4k_us", 1e9)),
    (["", "fence_spin=0"], _fence),
    (["", "d2d_compute=0"], lambda r: r.get("d2d1G", 0)),
    (["", "threads=8"], BULK),
    (["", "spin=30"], BULK),
    (["", "slot=32m"], BULK),
]


def measure_size(e: Any, np: Any, size: int) -> Row:
    tag = f"{size >> 20}M" if size >= MiB else f"{size >> 10}K"
    n = 5 if size >= 64 * MiB else 20 if size >= MiB else 200
    if np is not None:
        src: Any = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
        dst: Any = np.ones(size, dtype=np.uint8)
    else:
        src, dst = bytearray(os.urandom(size)), bytearray(b"\1" * size)
    out: Row = {}
    a = e.allocate(0, size)
    e.write(a, 0, src)
    out[f"w{tag}"] = size / median_seconds(partial(e.write, a, 0, src), n) / 1e9
    out[f"r{tag}"] = size / median_seconds(partial(e.read_into, a, 0, dst), n) / 1e9
    ok = bool(np.array_equal(dst, src)) if np is not None else dst == src
    out[f"rb{tag}"] = size / median_seconds(partial(e.read, a, 0, size), n) / 1e9
    ok = ok and e.read(a, 0, size) == bytes(memoryview(src))
    if not ok:
        out[f"BAD{tag}"] = True
    e.free(a)
    return out


def one(strategy: str) -> Row:
    try:
        import numpy as np
    except ImportError:
        np = None
    from exo_gpu_vulkan._native import Engine

    e = Engine(strategy=strategy)
    out: Row = {}
    for size in SIZES:
        out.update(measure_size(e, np, size))
    a4 = e.allocate(0, 4096)
    p4, b4 = os.urandom(4096), bytearray(4096)
    for _ in range(200):
        e.write(a4, 0, p4)
        e.read_into(a4, 0, b4)
    out["rt4k_us"] = median_seconds(lambda: (e.write(a4, 0, p4), e.read_into(a4, 0, b4)), 2000) * 1e6
    out["w4k_us"] = median_seconds(lambda: e.write(a4, 0, p4), 2000) * 1e6
    out["r4k_us"] = median_seconds(lambda: e.read_into(a4, 0, b4), 2000) * 1e6
    if bytes(b4) != p4:
        out["BAD4k"] = True
    out["alloc4k_us"] = median_seconds(lambda: e.free(e.allocate(0, 4096)), 2000) * 1e6
    g = 1 << 30
    try:
        x, y = e.allocate(0, g), e.allocate(0, g)
        pat = os.urandom(MiB)
        e.write(x, 512 * MiB, pat)
        e.copy(x, 0, y, 0, g)
        out["d2d1G"] = g / median_seconds(lambda: e.copy(x, 0, y, 0, g), 5) / 1e9
        if e.read(y, 512 * MiB, MiB) != pat:
            out["BADd2d"] = True
        e.free(x)
        e.free(y)
    except Exception as exc:
        out["d2d_error"] = str(exc)[:100]
    st = e.stats(0)
    out["paths"] = (
        f"m{st['mapped_bytes'] >> 20}/s{st['staged_bytes'] >> 20}/i{st['imported_bytes'] >> 20}"
        f"/r{st['import_refused']}/c{st['compute_copied_bytes'] >> 20}"
    )
    e.close()
    out.update(asyncio.run(backend_level(strategy)))
    return out


async def backend_level(strategy: str) -> Row:
    from exo_gpu_vulkan.backend import VulkanBackend

    be = VulkanBackend(strategy=strategy)
    await be.initialize()
    dev = "vulkan:0"
    res: Row = {}
    small = await be.allocate(dev, 4096)
    payload, back = os.urandom(4096), bytearray(4096)

    async def rt() -> None:
        await be.copy_to_device(payload, small)
        await be.copy_from_device_into(small, 0, back)

    async def af() -> None:
        await be.deallocate(await be.allocate(dev, 4096))

    res["be_rt4k_us"] = await median_seconds_async(rt, 2000, warmup=50) * 1e6
    res["be_alloc4k_us"] = await median_seconds_async(af, 2000, warmup=50) * 1e6
    chunk, count = 64 << 10, 64
    target = await be.allocate(dev, chunk * count)
    pieces = [os.urandom(chunk) for _ in range(count)]

    async def conc() -> None:
        await asyncio.gather(*(be.copy_to_device(pieces[i], target, i * chunk) for i in range(count)))

    res["be_conc64k"] = chunk * count / await median_seconds_async(conc, 20, warmup=50) / 1e9
    if await be.copy_from_device(target, 5 * chunk, chunk) != pieces[5]:
        res["BADconc"] = True
    await be.shutdown()
    return res


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "one":
        print("RESULT " + json.dumps(one(sys.argv[2])), flush=True)
        return
    budget = float(os.environ.get("SWEEP_BUDGET", "170"))
    start = time.monotonic()
    from exo_gpu_vulkan._native import Engine

    e = Engine()
    info = e.device_info(0)
    print(json.dumps({k: info[k] for k in info if k not in ("device_uuid",)}, default=str), flush=True)
    e.close()
    rows = []
    for strategy, tune in VARIANTS:
        left = budget - (time.monotonic() - start)
        if left < 8:
            print(f"SKIP {strategy} {tune}: out of time", flush=True)
            continue
        env = dict(os.environ, EXO_VULKAN_TUNE=tune)
        try:
            p = subprocess.run(
                [sys.executable, __file__, "one", strategy],
                env=env,
                capture_output=True,
                text=True,
                timeout=min(45, left),
                check=False,
            )
            line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            r = json.loads(line[0][7:]) if line else {"error": (p.stderr or p.stdout)[-300:]}
        except subprocess.TimeoutExpired:
            r = {"error": "timeout"}
        r = {"variant": f"{strategy} {tune}".strip(), "tune": tune, "strategy": strategy, **r}
        rows.append(r)
        shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}
        print(json.dumps({k: v for k, v in shown.items() if k not in ("tune", "strategy")}), flush=True)
    by_tune = {
        r["tune"]: r
        for r in rows
        if r["strategy"] == "auto" and not any(k.startswith("BAD") or k == "error" for k in r)
    }
    chosen = []
    for alternatives, score in CHOICES:
        present = [a for a in alternatives if a in by_tune]
        if not present or "" not in present:
            continue
        best = max(present, key=lambda a: score(by_tune[a]))
        if score(by_tune[best]) <= 1.05 * score(by_tune[""]):
            best = ""
        scores = ", ".join(f"{a or 'default'}={score(by_tune[a]):.2f}" for a in present)
        print(f"CHOICE {alternatives}: {scores} -> {best or 'default'}", flush=True)
        if best:
            chosen.append(best)
    final = ",".join(chosen)
    print(f"FINAL_TUNE={final}", flush=True)
    with open(os.environ.get("FINAL_TUNE_FILE", "/tmp/final_tune"), "w") as f:
        f.write(final)


if __name__ == "__main__":
    main()
