"""`exo-gpu monitor`: memory and live telemetry of a node's devices, refreshed in place.

For a person watching a node: on a terminal the table is redrawn in place; piped, each refresh is
appended (or, with --json, one JSON object per line) so it can be logged.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, TextIO

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import GPUError
from exo_gpu_plugins.registry import open_backend

__all__ = ["monitor", "sample"]


async def sample(backend: GPUBackend[Any], device_id: str) -> dict[str, Any]:
    """One reading of a device: memory figures and telemetry (None where there is no source)."""
    report = await backend.get_device_memory_info(device_id)
    return {
        "time": time.strftime("%H:%M:%S"),
        "device_id": device_id,
        "total_bytes": report.total_bytes,
        "used_bytes": report.used_bytes,
        "available_bytes": report.available_bytes,
        "reserved_bytes": report.reserved_bytes,
        "memory_source": report.source,
        "temperature_c": await backend.get_device_temperature(device_id),
        "power_w": await backend.get_device_power_usage(device_id),
        "clock_mhz": await backend.get_device_clock_rate(device_id),
    }


async def monitor(
    device_id: str | None,
    *,
    interval: float = 1.0,
    count: int | None = None,
    json_output: bool = False,
    out: TextIO,
) -> int:
    """Refresh until interrupted (or `count` refreshes); returns the exit status."""
    from exo_gpu_plugins.cli import format_bytes, render_table

    if interval <= 0:
        raise ValueError("--interval must be > 0")
    backend_name = device_id.partition(":")[0] if device_id else None
    backend = await open_backend(backend_name)
    try:
        if device_id is not None and backend.get_device(device_id) is None:
            raise GPUError(f"no device {device_id!r}")
        ids = [device_id] if device_id else [d.device_id for d in backend.list_devices()]
        live = out.isatty() and not json_output
        done = 0
        while count is None or done < count:
            rows = [await sample(backend, i) for i in ids]
            if json_output:
                for row in rows:
                    out.write(json.dumps(row) + "\n")
            else:
                if live:
                    out.write("\033[H\033[J")
                render_table(
                    ["time", "device", "used", "available", "total", "temp C", "power W", "clock MHz"],
                    [
                        [
                            r["time"],
                            r["device_id"],
                            format_bytes(r["used_bytes"]),
                            format_bytes(r["available_bytes"]),
                            format_bytes(r["total_bytes"]),
                            r["temperature_c"],
                            r["power_w"],
                            r["clock_mhz"],
                        ]
                        for r in rows
                    ],
                    out,
                )
                if live:
                    out.write("\nCtrl-C to stop\n")
            out.flush()
            done += 1
            if count is None or done < count:
                await asyncio.sleep(interval)
    finally:
        await backend.shutdown()
    return 0
