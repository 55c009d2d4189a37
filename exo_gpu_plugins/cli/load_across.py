"""`exo-gpu load PATH --devices vulkan:0,host:0 [--split memory|LAYERS...]`: one checkpoint over
several devices (of any backends) in one load, through `weights.load_across`: a progress bar per
device, then a table of what went where."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from exo_gpu_plugins.cli.options import error_text
from exo_gpu_plugins.cli.render import Column
from exo_gpu_plugins.cli.target import device_id, open_target, resolve
from exo_gpu_plugins.errors import DeviceNotFoundError
from exo_gpu_plugins.sizes import format_bytes

if TYPE_CHECKING:
    from exo_gpu_plugins.backend import GPUBackend
    from exo_gpu_plugins.cli.render import Screen
    from exo_gpu_plugins.weights import LayerRange, PlacementProgress
    from exo_gpu_plugins.weights.placement import Split

__all__ = ["load_across_devices", "parse_devices", "parse_split"]


def parse_devices(text: str) -> list[str]:
    """`vulkan:0,host:0` -> the device ids, each once."""
    ids = [device_id(part) for part in text.split(",") if part.strip()]
    if not ids:
        raise DeviceNotFoundError("--devices names no device (e.g. --devices vulkan:0,host:0)")
    if len(set(ids)) != len(ids):
        raise DeviceNotFoundError(f"--devices names a device twice: {text}")
    return ids


def parse_split(words: list[str] | None, devices: int) -> Split:
    """`--split memory` (the default), or one START:END per device (spaces or commas)."""
    from exo_gpu_plugins.weights import LayerRange

    parts = [part for word in (words or ["memory"]) for part in word.split(",") if part.strip()]
    if parts == ["memory"]:
        return "memory"
    if len(parts) != devices:
        raise ValueError(
            f"--split: {len(parts)} layer range(s) for {devices} device(s); give one START:END "
            "per device, in --devices order, or 'memory'"
        )
    ranges = []
    for part in parts:
        try:
            ranges.append(LayerRange.parse(part))
        except ValueError as exc:
            raise ValueError(f"--split {part}: {error_text(exc)}") from exc
    return ranges


async def load_across_devices(
    args: argparse.Namespace, screen: Screen, layers: LayerRange | None
) -> int:
    from exo_gpu_plugins.weights import load_placement, plan_across

    if args.backend is not None or args.device is not None:
        raise ValueError(
            "--devices names the devices (and their backends): leave out --device/--backend"
        )
    ids = parse_devices(args.devices)
    split = parse_split(args.split, len(ids))
    backends: dict[str, GPUBackend[Any]] = {}
    try:
        pairs = []
        for device in ids:
            name = device.partition(":")[0]
            if name not in backends:
                backends[name] = await open_target(resolve(None, device))
            elif backends[name].get_device(device) is None:
                raise DeviceNotFoundError(f"no device {device!r} in backend {name!r}")
            pairs.append((backends[name], device))
        placement = await plan_across(pairs, args.paths, split=split, layers=layers)
        totals = {d.device_id: d.total_bytes for d in placement.devices}
        descriptions = {
            d.device_id: f"{d.device_id} layers {d.layers.start}:{d.layers.end}"
            for d in placement.devices
        }
        with screen.progress_bars(totals, descriptions) as advance:
            seen = dict.fromkeys(totals, 0)

            def progress(update: PlacementProgress) -> None:
                advance(update.device_id, update.device.bytes_done - seen[update.device_id])
                seen[update.device_id] = update.device.bytes_done

            placed = await load_placement(pairs, placement, progress=progress)
        try:
            mismatched: dict[str, list[str]] | None = None
            if args.verify:
                mismatched = {}
                with screen.status(f"reading {format_bytes(placed.delivered_bytes)} back"):
                    for backend, device in pairs:
                        mismatched[device] = await placed.weights[device].verify(backend)
        finally:
            await placed.deallocate(pairs)
    finally:
        for backend in backends.values():
            await backend.shutdown()
    rows = []
    for part in placement.devices:
        loaded = placed.weights[part.device_id]
        rows.append(
            {
                "device_id": part.device_id,
                "layers": f"{part.layers.start}:{part.layers.end}",
                "tensors": len(loaded.tensors),
                "shared_tensors": [t.name for t in part.shared.tensors],
                "bytes": loaded.total_bytes,
                "allocated_bytes": loaded.allocated_bytes,
                "available_bytes": part.available_bytes,
                "allocations": len(loaded.handles),
                "mismatched_tensors": None if mismatched is None else mismatched[part.device_id],
            }
        )
    rate = placed.bytes_per_second
    summary = {
        "files": list(placed.files),
        "split": placed.split,
        "read_bytes": placed.read_bytes,
        "delivered_bytes": placed.delivered_bytes,
        "seconds": placed.seconds,
        "gb_per_s": None if rate is None else rate / 1e9,
        "verified": None if mismatched is None else not any(mismatched.values()),
        "devices": rows,
    }
    if args.json:
        screen.json(summary)
    else:
        _render(screen, summary)
    return 1 if summary["verified"] is False else 0


def _render(screen: Screen, summary: dict[str, Any]) -> None:
    columns = [
        Column("device"),
        Column("layers"),
        Column("tensors", "right"),
        Column("bytes", "right"),
        Column("available", "right"),
        Column("allocations", "right"),
        Column("shared"),
        Column("check"),
    ]
    rows = [
        [
            row["device_id"],
            row["layers"],
            row["tensors"],
            format_bytes(row["bytes"]),
            format_bytes(row["available_bytes"]),
            row["allocations"],
            ", ".join(row["shared_tensors"]) or "-",
            {None: "-", True: "identical"}.get(
                None if row["mismatched_tensors"] is None else not row["mismatched_tensors"],
                f"DIFFER: {', '.join(row['mismatched_tensors'] or [])}",
            ),
        ]
        for row in summary["devices"]
    ]
    screen.table(columns, rows)
    rate = "- GB/s" if summary["gb_per_s"] is None else f"{summary['gb_per_s']:.2f} GB/s"
    files = len(summary["files"])
    screen.line(
        f"loaded {format_bytes(summary['delivered_bytes'])} onto {len(rows)} devices "
        f"(split by {summary['split']}) in {summary['seconds']:.2f} s ({rate}); "
        f"read {format_bytes(summary['read_bytes'])} from {files} file{'s' if files != 1 else ''}, "
        "each tensor byte once"
    )
