"""Device truth: this project's memory figures, identity and telemetry beside nvidia-smi's own.

Run on an NVIDIA machine with the Vulkan plugin installed:

    python benchmarks/device_truth.py [--device vulkan:0] [--gib 8] [--json]

It prints, side by side: total memory, available vs nvidia-smi's free, the drop in available after
allocating N GiB through the plugin and the recovery after freeing it, the UUID, and temperature,
power and graphics clock read between two nvidia-smi readings (the target: inside their spread).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
from typing import Any

import exo_gpu_plugins

MiB = 1 << 20
FIELDS = "uuid,name,memory.total,memory.free,memory.used,temperature.gpu,power.draw,clocks.gr"


def smi(uuid: str | None) -> dict[str, Any]:
    """One nvidia-smi reading of the card with this UUID (or the first card)."""
    text = subprocess.run(
        ["nvidia-smi", f"--query-gpu={FIELDS}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [[c.strip() for c in line.split(",")] for line in text.strip().splitlines()]
    row = next((r for r in rows if uuid and r[0] == uuid), rows[0])
    return {
        "uuid": row[0],
        "name": row[1],
        "total_bytes": int(row[2]) * MiB,
        "free_bytes": int(row[3]) * MiB,
        "used_bytes": int(row[4]) * MiB,
        "temperature_c": float(row[5]),
        "power_w": float(row[6]),
        "clock_mhz": int(row[7]),
    }


def pct(a: float, b: float) -> float:
    return abs(a - b) / b * 100 if b else float("inf")


def within(value: float | None, first: float, second: float, slack: float = 0.0) -> bool:
    if value is None:
        return False
    return min(first, second) - slack <= value <= max(first, second) + slack


async def measure(device_id: str, gib: int) -> dict[str, Any]:
    backend = await exo_gpu_plugins.open_backend(device_id.partition(":")[0])
    try:
        device = await backend.get_device_properties(device_id)
        before_smi = smi(device.uuid)
        before = await backend.get_device_memory_info(device_id)
        size = gib << 30
        handle = await backend.allocate(device_id, size)
        await backend.synchronize(device_id)
        during = await backend.get_device_memory_info(device_id)
        during_smi = smi(device.uuid)
        await backend.deallocate(handle)
        after = await backend.get_device_memory_info(device_id)
        after_smi = smi(device.uuid)
        first = smi(device.uuid)
        ours = {
            "temperature_c": await backend.get_device_temperature(device_id),
            "power_w": await backend.get_device_power_usage(device_id),
            "clock_mhz": await backend.get_device_clock_rate(device_id),
        }
        second = smi(device.uuid)
    finally:
        await backend.shutdown()
    drop = before.available_bytes - during.available_bytes
    checks = {
        "total equals nvidia-smi's": device.memory_bytes == before_smi["total_bytes"],
        "available within 1% of nvidia-smi free": pct(before.available_bytes, before_smi["free_bytes"])
        <= 1,
        f"available drops by {gib} GiB +-1%": pct(drop, size) <= 1,
        "available recovers within 1% after free": pct(after.available_bytes, before.available_bytes)
        <= 1,
        "uuid equals nvidia-smi's": device.uuid == before_smi["uuid"],
        "temperature within the two readings": within(
            ours["temperature_c"], first["temperature_c"], second["temperature_c"], slack=1.0
        ),
        "power within the two readings": within(
            ours["power_w"], first["power_w"], second["power_w"], slack=max(2.0, 0.05 * first["power_w"])
        ),
        "clock within the two readings": within(
            ours["clock_mhz"], first["clock_mhz"], second["clock_mhz"]
        ),
    }
    return {
        "device": device.model_dump(mode="json"),
        "memory_source": before.source,
        "rows": [
            ("total bytes", device.memory_bytes, before_smi["total_bytes"]),
            ("available / free bytes", before.available_bytes, before_smi["free_bytes"]),
            (
                f"available / free with {gib} GiB allocated",
                during.available_bytes,
                during_smi["free_bytes"],
            ),
            ("drop in available / free", drop, before_smi["free_bytes"] - during_smi["free_bytes"]),
            ("available / free after freeing", after.available_bytes, after_smi["free_bytes"]),
            ("uuid", device.uuid, before_smi["uuid"]),
            ("compute units (SMs)", device.compute_units, None),
            (
                "temperature C (ours between smi readings)",
                ours["temperature_c"],
                f"{first['temperature_c']} .. {second['temperature_c']}",
            ),
            ("power W", ours["power_w"], f"{first['power_w']} .. {second['power_w']}"),
            ("graphics clock MHz", ours["clock_mhz"], f"{first['clock_mhz']} .. {second['clock_mhz']}"),
        ],
        "checks": checks,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="this project's device figures beside nvidia-smi's")
    parser.add_argument("--device", default="vulkan:0")
    parser.add_argument("--gib", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("nvidia-smi") is None:
        print("nvidia-smi not found: this comparison needs an NVIDIA card", file=sys.stderr)
        return 2
    result = asyncio.run(measure(args.device, args.gib))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(f"{result['device']['name']} ({args.device}), memory source: {result['memory_source']}")
    print(f"{'figure':<44} {'exo-gpu':>26} {'nvidia-smi':>40}")
    for label, ours, theirs in result["rows"]:
        print(f"{label:<44} {ours!s:>26} {theirs!s:>40}")
    print()
    for check, ok in result["checks"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {check}")
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
