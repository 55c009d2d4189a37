"""`exo-gpu`: inspect plugins and devices, check a backend against the contract, measure copies.

Every command takes `--json` for scripts. Errors print one line on stderr and exit non-zero; a
traceback is shown only with `--debug`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TextIO

from exo_gpu_plugins import config
from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import GPUError
from exo_gpu_plugins.registry import Registry, get_registry, open_backend

__all__ = ["main"]

log = logging.getLogger("exo_gpu_plugins.cli")


def format_bytes(count: int | None) -> str:
    """1536 -> '1.5 KiB'; None -> '-'."""
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO) -> None:
    """A plain, aligned text table (no colours, so it survives logs and pipes)."""
    cells = [[str(h) for h in headers], *[["-" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        out.write("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() + "\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")


def _emit_json(data: object, out: TextIO) -> None:
    out.write(json.dumps(data, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------------------------------
# Commands


def cmd_plugins(args: argparse.Namespace, out: TextIO) -> int:
    registry = get_registry()
    rows: list[dict[str, Any]] = []
    for plugin in registry.plugins:
        for backend in plugin.backends or ("",):
            entry = registry.backends.get(backend)
            reason = entry.unavailable_reason() if entry else None
            rows.append(
                {
                    "plugin": plugin.name,
                    "distribution": plugin.distribution,
                    "version": plugin.version,
                    "status": plugin.status,
                    "backend": backend or None,
                    "priority": entry.info.priority if entry else None,
                    "available": (reason is None) if entry else None,
                    "unavailable_reason": reason,
                    "error": plugin.error,
                }
            )
    if args.json:
        _emit_json(rows, out)
        return 0
    render_table(
        ["plugin", "distribution", "version", "backend", "priority", "status"],
        [
            [
                r["plugin"],
                r["distribution"],
                r["version"],
                r["backend"],
                r["priority"],
                _status_text(r),
            ]
            for r in rows
        ],
        out,
    )
    return 0


def _status_text(row: dict[str, Any]) -> str:
    if row["status"] != "loaded":
        return f"{row['status']}: {row['error']}" if row["error"] else row["status"]
    if row["available"] is False:
        return f"unavailable: {row['unavailable_reason']}"
    return "available"


async def _open_each(registry: Registry, names: Sequence[str]) -> list[GPUBackend[Any]]:
    opened: list[GPUBackend[Any]] = []
    for name in names:
        entry = registry.entry(name)
        if entry.unavailable_reason() is not None:
            continue
        backend = entry.load_class()()
        try:
            await backend.initialize()
        except GPUError as exc:
            log.warning("backend %s could not be opened: %s", name, exc)
            continue
        opened.append(backend)
    return opened


async def _devices(args: argparse.Namespace, out: TextIO) -> int:
    registry = get_registry()
    names = [args.backend] if args.backend else registry.names()
    default = registry.select(args.backend) if not args.backend else args.backend
    backends = await _open_each(registry, names)
    if args.backend and not backends:
        raise GPUError(f"backend {args.backend!r} could not be opened")
    rows: list[dict[str, Any]] = []
    try:
        for backend in backends:
            for device in backend.list_devices():
                report = await backend.get_device_memory_info(device.device_id)
                rows.append(
                    {
                        **device.model_dump(mode="json"),
                        "total_bytes": report.total_bytes,
                        "available_bytes": report.available_bytes,
                        "memory_source": report.source,
                        "default": backend.name == default,
                    }
                )
    finally:
        for backend in backends:
            await backend.shutdown()
    if args.json:
        _emit_json(rows, out)
        return 0
    render_table(
        ["", "id", "name", "type", "total", "available", "compute units", "uuid"],
        [
            [
                "*" if r["default"] else "",
                r["device_id"],
                r["name"],
                r["device_type"],
                format_bytes(r["total_bytes"]),
                format_bytes(r["available_bytes"]),
                r["compute_units"],
                r["uuid"],
            ]
            for r in rows
        ],
        out,
    )
    out.write(f"\n* default backend ({config.requested_backend(args.backend).source}): {default}\n")
    return 0


def _backend_of(device_id: str) -> str:
    name, sep, index = device_id.partition(":")
    if not sep or not index.isdigit():
        raise GPUError(f"device id {device_id!r} is not of the form '<backend>:<index>'")
    return name


async def _info(args: argparse.Namespace, out: TextIO) -> int:
    backend = await open_backend(_backend_of(args.device))
    try:
        device = await backend.get_device_properties(args.device)
        report = await backend.get_device_memory_info(args.device)
        caps = backend.capabilities(args.device)
        telemetry = {
            "temperature_c": await backend.get_device_temperature(args.device),
            "power_w": await backend.get_device_power_usage(args.device),
            "clock_mhz": await backend.get_device_clock_rate(args.device),
        }
    finally:
        await backend.shutdown()
    data = {
        "device": device.model_dump(mode="json"),
        "memory": report.model_dump(mode="json"),
        "capabilities": caps.model_dump(mode="json"),
        "telemetry": telemetry,
    }
    if args.json:
        _emit_json(data, out)
        return 0
    for title, section in data.items():
        out.write(f"{title}\n")
        for key, value in section.items():
            if key == "heaps":
                for heap in value:
                    out.write(f"  heap {heap['index']}: {_heap_line(heap)}\n")
                continue
            sized = key.endswith("_bytes") or key == "memory_available"
            shown = format_bytes(value) if sized and value is not None else value
            out.write(f"  {key:<30} {'-' if shown is None else shown}\n")
    return 0


def _heap_line(heap: dict[str, Any]) -> str:
    kind = "device-local" if heap["device_local"] else "host"
    return (
        f"{kind}, total {format_bytes(heap['total_bytes'])}, used "
        f"{format_bytes(heap['used_bytes'])}, available {format_bytes(heap['available_bytes'])}"
    )


async def _roundtrip(args: argparse.Namespace, out: TextIO) -> int:
    backend = await open_backend(args.backend)
    try:
        device_id = args.device or backend.list_devices()[0].device_id
        payload = os.urandom(args.size)
        start = time.perf_counter()
        handle = await backend.allocate(device_id, args.size)
        await backend.copy_to_device(payload, handle)
        uploaded = time.perf_counter()
        echoed = await backend.copy_from_device(handle, 0, args.size)
        downloaded = time.perf_counter()
        await backend.deallocate(handle)
    finally:
        await backend.shutdown()
    exact = echoed == payload
    result = {
        "backend": backend.name,
        "device_id": device_id,
        "size_bytes": args.size,
        "exact": exact,
        "upload_seconds": uploaded - start,
        "download_seconds": downloaded - uploaded,
    }
    if args.json:
        _emit_json(result, out)
    else:
        out.write(
            f"round trip on {device_id}: {format_bytes(args.size)} up in "
            f"{(uploaded - start) * 1e3:.2f} ms (allocation included), down in "
            f"{(downloaded - uploaded) * 1e3:.2f} ms; "
            f"{'bytes identical' if exact else 'BYTES DIFFER'}\n"
        )
    return 0 if exact else 1


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    try:
        from exo_gpu_plugins.testing.check import run_check
    except ImportError as exc:
        raise GPUError(
            f"the conformance kit needs pytest and hypothesis: pip install "
            f"'exo-gpu-plugins[testing]' ({exc})"
        ) from exc
    status: int = run_check(
        args.backend,
        xfail_file=args.xfail,
        examples=args.examples,
        verbose=args.verbose,
        json_output=args.json,
        out=out,
    )
    return status


async def _bench(args: argparse.Namespace, out: TextIO) -> int:
    from exo_gpu_plugins.bench import MiB, run_benchmark

    return await run_benchmark(
        args.backend,
        args.device,
        sizes=args.sizes or (64 * MiB, 256 * MiB),
        d2d_size=args.d2d_size,
        repeats=args.repeats,
        peers=not args.no_peers,
        json_output=args.json,
        out=out,
    )


async def _monitor(args: argparse.Namespace, out: TextIO) -> int:
    from exo_gpu_plugins.monitor import monitor

    return await monitor(
        args.device, interval=args.interval, count=args.count, json_output=args.json, out=out
    )


def _async(
    command: Callable[[argparse.Namespace, TextIO], Coroutine[Any, Any, int]],
) -> Callable[[argparse.Namespace, TextIO], int]:
    def run(args: argparse.Namespace, out: TextIO) -> int:
        return asyncio.run(command(args, out))

    return run


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    lowered = text.strip().lower().removesuffix("ib").removesuffix("b")
    scale = units.get(lowered[-1:], 1)
    number = lowered[:-1] if lowered[-1:] in units else lowered
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4096, 64K, 256M, 1G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be > 0: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exo-gpu",
        description="GPU memory backends for exo: list plugins and devices, inspect a device, "
        "round-trip bytes, check a backend against the contract, measure copy speed.",
        epilog="Backend choice: --backend > EXO_GPU_BACKEND > [gpu] backend in exo's config "
        "(EXO_CONFIG_FILE or ~/.config/exo/config.toml) > automatic.",
    )
    parser.add_argument("--debug", action="store_true", help="log verbosely, show tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str, help_text: str, handler: Callable[[argparse.Namespace, TextIO], int]
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
        sub.set_defaults(handler=handler)
        return sub

    add("plugins", "installed plugins, their backends, availability and load errors", cmd_plugins)
    devices = add("devices", "devices of every available backend, with memory", _async(_devices))
    devices.add_argument("--backend", help="only this backend's devices")
    info = add(
        "info",
        "every property, the memory report, capabilities and telemetry of a device",
        _async(_info),
    )
    info.add_argument("device", help="device id, e.g. vulkan:0 or host:0")
    trip = add(
        "roundtrip",
        "allocate on the default (or given) backend, copy random bytes up and back, and verify them",
        _async(_roundtrip),
    )
    trip.add_argument("--backend", help="backend name (default: as exo selects; see exo-gpu --help)")
    trip.add_argument("--device", help="device id (default: the backend's first device)")
    trip.add_argument("--size", type=_size, default=16 << 20, help="bytes, e.g. 64M (default 16M)")
    check = add(
        "check",
        "run the conformance kit against an installed backend; exit 1 on any failure",
        cmd_check,
    )
    check.add_argument("backend", help="backend name, e.g. host or vulkan")
    check.add_argument("--xfail", help="expected-failures file: 'test_id  # reason' per line")
    check.add_argument("--examples", type=int, help="Hypothesis examples for the state machine")
    check.add_argument("-v", "--verbose", action="store_true", help="show every test")
    bench = add(
        "bench",
        "copy speed of a backend beside every peer present (numpy memcpy, wgpu-py, "
        "CUDA through torch), as one table",
        _async(_bench),
    )
    bench.add_argument("--backend", help="backend name (default: as exo selects; see exo-gpu --help)")
    bench.add_argument("--device", help="device id (default: the backend's first device)")
    bench.add_argument("--sizes", type=_size, nargs="+", help="bulk copy sizes (default 64M 256M)")
    bench.add_argument("--d2d-size", type=_size, default=1 << 30, help="device-to-device size (1G)")
    bench.add_argument("--repeats", type=int, default=5, help="repetitions per figure (median)")
    bench.add_argument("--no-peers", action="store_true", help="measure this project only")
    mon = add(
        "monitor", "memory and telemetry of devices, refreshed in place until Ctrl-C", _async(_monitor)
    )
    mon.add_argument(
        "device", nargs="?", help="one device id (default: every device of the default backend)"
    )
    mon.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    mon.add_argument("--count", type=int, help="stop after this many refreshes")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of `exo-gpu`; returns the exit status."""
    out = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="exo-gpu: %(levelname)s: %(message)s",
    )
    try:
        status: int = args.handler(args, out)
    except KeyboardInterrupt:
        return 130
    except (GPUError, ValueError, TypeError, OSError) as exc:
        if args.debug:
            raise
        sys.stderr.write(f"exo-gpu: error: {exc}\n")
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
