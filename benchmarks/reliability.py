"""Reliability figures at full size, for docs/reliability.md: load, soak, memory pressure,
isolation, cancellation, bad input, on every backend that can run here.

    python benchmarks/reliability.py [--backends host vulkan] [--quick] [--json]

The same workloads run at CI size in tests/reliability (exo_gpu_plugins.testing.stress).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from exo_gpu_plugins import get_registry
from exo_gpu_plugins.testing import stress

MiB = 1 << 20


async def figures_for(name: str, quick: bool) -> dict[str, Any]:
    backend = get_registry().entry(name).load_class()()
    await backend.initialize()
    device = backend.list_devices()[0]
    device_id = device.device_id
    stats = getattr(backend, "engine_stats", None)
    out: dict[str, Any] = {"backend": name, "device": device.name}
    try:
        scale = 1 if quick else 10
        start = time.perf_counter()
        load = await asyncio.to_thread(
            stress.load,
            backend,
            device_id,
            threads=8,
            tasks=16,
            operations_per_task=40 * scale,
            timeout=600,
        )
        out["load"] = asdict(load)
        out["soak"] = asdict(
            await stress.soak(
                backend,
                device_id,
                cycles=10_000 if quick else 100_000,
                max_size=1 * MiB,
                stats=(lambda: stats(device_id)) if stats else None,
            )
        )
        caps = backend.capabilities(device_id)
        if not (
            caps.unified_memory and caps.transfer_strategy == "memcpy" and device.memory_bytes > 8 << 30
        ):
            out["pressure"] = asdict(await stress.memory_pressure(backend, device_id, chunk=256 * MiB))
        out["isolation"] = asdict(
            await stress.isolation(backend, device_id, cycles=20 if quick else 200)
        )
        out["cancel"] = asdict(await stress.cancel_large_copy(backend, device_id, size=256 * MiB))
        out["seconds"] = time.perf_counter() - start
    finally:
        await backend.shutdown()
    return out


def bad_input_count() -> tuple[int, str]:
    """Runs tests/reliability/test_bad_input.py and returns (cases, pytest's summary line)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/reliability/test_bad_input.py"],
        capture_output=True,
        text=True,
        check=False,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for tests/
    from tests.reliability.test_bad_input import CASES

    return len(CASES), summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=None)
    parser.add_argument("--quick", action="store_true", help="CI-sized workloads")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    registry = get_registry()
    names = args.backends or [
        n for n in registry.names() if registry.entry(n).unavailable_reason() is None
    ]
    results = [asyncio.run(figures_for(name, args.quick)) for name in names]
    cases, summary = bad_input_count()
    if args.json:
        print(
            json.dumps(
                {"results": results, "bad_input_cases": cases, "bad_input": summary},
                indent=2,
                default=str,
            )
        )
        return 0
    for r in results:
        print(f"## {r['backend']} ({r['device']})")
        load = r["load"]
        print(
            f"- load: {load['threads']} threads x {load['tasks_per_thread']} tasks, "
            f"{load['operations']} operations, {load['bytes_verified'] / MiB:.1f} MiB verified, "
            f"{load['seconds']:.1f} s, no deadlock, no mismatch"
        )
        soak = r["soak"]
        print(
            f"- soak: {soak['cycles']} allocate/free cycles in {soak['seconds']:.1f} s, RSS growth "
            f"{soak['rss_growth_bytes'] / MiB:.2f} MiB, used bytes {soak['used_before']} -> "
            f"{soak['used_after']}, engine {soak['stats_before']} -> {soak['stats_after']}"
        )
        if "pressure" in r:
            p = r["pressure"]
            print(
                f"- pressure: request > device refused: {p['huge_request_refused']}; "
                f"{p['allocations_before_oom']} x {p['chunk_bytes'] // MiB} MiB until OOM; "
                f"available {p['baseline_available']} before, {p['available_after_free']} after freeing"
            )
        iso = r["isolation"]
        print(
            f"- isolation: {iso['cycles']} fill/free/reallocate cycles, "
            f"{iso['bytes_checked'] / MiB:.1f} MiB "
            f"read back as zeros, {iso['distinct_handle_ids']} distinct handle ids of "
            f"{iso['handle_id_bits']} bits"
        )
        c = r["cancel"]
        print(
            f"- cancel: a {c['size'] // MiB} MiB upload cancelled "
            f"(cancelled={c['cancelled']}), backend usable, "
            f"{c['live_after']} handles leaked, destination afterwards: {c['destination_state']}"
        )
        print()
    print(f"bad input: {cases} cases x each backend: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
