"""Device truth: this project's figures for a device, through the public API, beside nvidia-smi's.

Run on an NVIDIA machine with the Vulkan plugin installed:

    python benchmarks/device_truth.py [--device vulkan:0] [--gib 8] [--json] [--strict]

It prints one row per figure with our value, the reference and whether they match: total memory,
available vs nvidia-smi's free, the drop in available after allocating N GiB through the plugin and
the recovery after freeing it, the UUID, the SM count (against torch's, when torch has CUDA), the
compute capability, the maximum SM and memory clocks, the memory bus width and the peak bandwidth,
whether utilization is declared, and utilization, temperature, power and graphics clock read between
two nvidia-smi readings (the target: inside their spread). With --strict it exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
from typing import Any

import exo_gpu_plugins

MiB = 1 << 20
# `nvidia-smi --query-gpu` fields (stable across drivers; see `nvidia-smi --help-query-gpu`).
SMI_FIELDS = (
    "uuid",
    "name",
    "memory.total",
    "memory.free",
    "memory.used",
    "temperature.gpu",
    "power.draw",
    "clocks.gr",
    "utilization.gpu",
    "compute_cap",
    "clocks.max.sm",
    "clocks.max.memory",
)

Row = tuple[str, Any, Any, "bool | None"]  # label, ours, reference, match (None: nothing to compare)


def smi(uuid: str | None) -> dict[str, Any]:
    """One nvidia-smi reading of the card with this UUID (or the first card); None where it says
    "[N/A]" or "[Not Supported]"."""
    text = subprocess.run(
        ["nvidia-smi", f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [[c.strip() for c in line.split(",")] for line in text.strip().splitlines()]
    row = next((r for r in rows if uuid and r[0] == uuid), rows[0])
    raw = {f: None if v.startswith("[") else v for f, v in zip(SMI_FIELDS, row, strict=True)}

    def real(field: str) -> float | None:
        value = raw[field]
        return None if value is None else float(value)

    def whole(field: str) -> int | None:
        value = real(field)
        return None if value is None else int(value)

    return {
        "uuid": raw["uuid"],
        "name": raw["name"],
        "total_bytes": (whole("memory.total") or 0) * MiB,
        "free_bytes": (whole("memory.free") or 0) * MiB,
        "used_bytes": (whole("memory.used") or 0) * MiB,
        "temperature_c": real("temperature.gpu"),
        "power_w": real("power.draw"),
        "clock_mhz": whole("clocks.gr"),
        "utilization": real("utilization.gpu"),
        "compute_capability": raw["compute_cap"],
        "max_sm_clock_mhz": whole("clocks.max.sm"),
        "max_memory_clock_mhz": whole("clocks.max.memory"),
    }


def nvml_bus_width(uuid: str | None) -> int | None:
    """The memory bus width as NVML states it, read here directly (not through this package).

    nvidia-smi offers no bus width: there is no `--query-gpu` field for it and `nvidia-smi -q`
    prints none (checked on the H200, driver 580), so NVML's own `nvmlDeviceGetMemoryBusWidth` is
    the reference; None without nvidia-ml-py.
    """
    if uuid is None:
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetMemoryBusWidth(pynvml.nvmlDeviceGetHandleByUUID(uuid.encode())))
    except Exception as exc:  # ImportError, or any NVMLError
        print(f"no NVML bus width: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def torch_sm_count(uuid: str | None) -> int | None:
    """The SM count CUDA reports (torch), in a child process so its CUDA context never touches the
    memory figures above; None without torch or CUDA."""
    if uuid is None:
        return None
    code = "import torch; print(torch.cuda.get_device_properties(0).multi_processor_count)"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            check=False,
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "CUDA_VISIBLE_DEVICES": uuid},
        )
        return int(done.stdout.strip()) if done.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def pct(a: float, b: float) -> float:
    return abs(a - b) / b * 100 if b else float("inf")


def within(value: float | None, first: float | None, second: float | None, slack: float = 0.0) -> bool:
    if value is None or first is None or second is None:
        return False
    return min(first, second) - slack <= value <= max(first, second) + slack


def equal(ours: Any, theirs: Any) -> bool | None:
    """A match where the reference exists; no comparison (None) where it does not."""
    return None if theirs is None else ours == theirs


async def measure(device_id: str, gib: int) -> dict[str, Any]:
    backend = await exo_gpu_plugins.open_backend(device_id.partition(":")[0])
    try:
        device = await backend.get_device_properties(device_id)
        capabilities = backend.capabilities(device_id)
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
            "utilization": await backend.get_device_utilization(device_id),
            "temperature_c": await backend.get_device_temperature(device_id),
            "power_w": await backend.get_device_power_usage(device_id),
            "clock_mhz": await backend.get_device_clock_rate(device_id),
        }
        second = smi(device.uuid)
    finally:
        await backend.shutdown()
    bus_width = nvml_bus_width(device.uuid)
    sms = torch_sm_count(device.uuid)
    # Peak bandwidth from nvidia-smi's maximum memory clock and NVML's bus width, two transfers per
    # clock (the H100 SXM's 2619 MHz on 5120 bits is its published 3.35 TB/s; the H200's 3201 MHz on
    # 6016 bits gives 4814 GB/s, its published 4.8 TB/s).
    max_mem = before_smi["max_memory_clock_mhz"]
    peak = round(2 * max_mem * bus_width / 8 / 1000, 1) if max_mem and bus_width else None
    drop = before.available_bytes - during.available_bytes
    smi_drop = before_smi["free_bytes"] - during_smi["free_bytes"]

    def spread(key: str) -> str:
        return f"{first[key]} .. {second[key]}"

    def between(key: str, slack: float = 0.0) -> bool:
        return within(ours[key], first[key], second[key], slack)

    power_slack = max(2.0, 0.05 * (first["power_w"] or 0.0))
    bandwidth_ok = None if peak is None else abs((device.bandwidth_gbps or 0.0) - peak) <= 0.1
    smi_has_utilization = before_smi["utilization"] is not None
    rows: list[Row] = [
        (
            "total bytes",
            device.memory_bytes,
            before_smi["total_bytes"],
            device.memory_bytes == before_smi["total_bytes"],
        ),
        (
            "available / free bytes",
            before.available_bytes,
            before_smi["free_bytes"],
            pct(before.available_bytes, before_smi["free_bytes"]) <= 1,
        ),
        (
            f"available / free, {gib} GiB allocated",
            during.available_bytes,
            during_smi["free_bytes"],
            None,
        ),
        (f"drop in available / free ({gib} GiB +-1%)", drop, smi_drop, pct(drop, size) <= 1),
        (
            "available / free after freeing",
            after.available_bytes,
            after_smi["free_bytes"],
            pct(after.available_bytes, before.available_bytes) <= 1,
        ),
        ("uuid", device.uuid, before_smi["uuid"], device.uuid == before_smi["uuid"]),
        ("compute units (SMs; torch)", device.compute_units, sms, equal(device.compute_units, sms)),
        (
            "compute capability",
            device.compute_capability,
            before_smi["compute_capability"],
            equal(device.compute_capability, before_smi["compute_capability"]),
        ),
        (
            "max SM clock MHz",
            device.clock_rate_mhz,
            before_smi["max_sm_clock_mhz"],
            equal(device.clock_rate_mhz, before_smi["max_sm_clock_mhz"]),
        ),
        (
            "max memory clock MHz",
            device.memory_clock_mhz,
            max_mem,
            equal(device.memory_clock_mhz, max_mem),
        ),
        (
            "memory bus width bits (NVML)",
            device.memory_bus_width_bits,
            bus_width,
            equal(device.memory_bus_width_bits, bus_width),
        ),
        ("peak bandwidth GB/s", device.bandwidth_gbps, peak, bandwidth_ok),
        ("tensor cores", device.tensor_core_count, None, None),
        (
            "utilization declared",
            capabilities.utilization,
            smi_has_utilization,
            capabilities.utilization == smi_has_utilization,
        ),
        (
            "utilization % (between smi readings)",
            ours["utilization"],
            spread("utilization"),
            between("utilization", 5.0),
        ),
        ("temperature C", ours["temperature_c"], spread("temperature_c"), between("temperature_c", 1.0)),
        ("power W", ours["power_w"], spread("power_w"), between("power_w", power_slack)),
        ("graphics clock MHz", ours["clock_mhz"], spread("clock_mhz"), between("clock_mhz")),
    ]
    return {
        "device": device.model_dump(mode="json"),
        "memory_source": before.source,
        "field_sources": dict(device.field_sources),
        "rows": rows,
        "checks": {label: ok for label, _, _, ok in rows if ok is not None},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="this project's device figures beside nvidia-smi's")
    parser.add_argument("--device", default="vulkan:0")
    parser.add_argument("--gib", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any figure does not match")
    args = parser.parse_args()
    if shutil.which("nvidia-smi") is None:
        print("nvidia-smi not found: this comparison needs an NVIDIA card", file=sys.stderr)
        return 2
    result = asyncio.run(measure(args.device, args.gib))
    failed = [label for label, ok in result["checks"].items() if not ok]
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(f"{result['device']['name']} ({args.device}), memory source: {result['memory_source']}")
        print(f"{'figure':<40} {'exo-gpu':>42} {'reference':>42}  match")
        for label, ours, theirs, ok in result["rows"]:
            mark = "" if ok is None else "yes" if ok else "NO"
            print(f"{label:<40} {ours!s:>42} {theirs!s:>42}  {mark}")
        sources = ", ".join(f"{name}: {source}" for name, source in result["field_sources"].items())
        print(f"\nfield sources: {sources or 'none stated'}")
        print(f"{len(result['checks']) - len(failed)} of {len(result['checks'])} figures match", end="")
        print(f"; mismatched: {', '.join(failed)}" if failed else "")
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
