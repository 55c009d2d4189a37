"""`exo-gpu load PATH...`: load a safetensors checkpoint (files, folders, an index) onto a device
through the weights API, with a progress bar, then a summary; `--verify` reads every tensor back
and compares it with the file's bytes. `--devices` spreads it over several (load_across.py)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from exo_gpu_plugins.cli.options import error_text
from exo_gpu_plugins.cli.target import first_device, open_target, resolve
from exo_gpu_plugins.sizes import format_bytes

if TYPE_CHECKING:
    from exo_gpu_plugins.cli.options import AddCommand
    from exo_gpu_plugins.cli.render import Screen
    from exo_gpu_plugins.weights import (
        LayerRange,
        LoadProgress,
    )

__all__ = ["cmd_load", "register"]


def register(add: AddCommand) -> None:
    sub = add(
        "load",
        "load safetensors weights (files, folders or an index) onto a device, then summarize",
        cmd_load,
    )
    sub.add_argument(
        "paths", nargs="+", metavar="PATH", help="a .safetensors file, a folder, or an index"
    )
    sub.add_argument(
        "--backend", help="backend name (default: the backend of --device, else as exo selects)"
    )
    sub.add_argument("--device", help="device id, e.g. vulkan:0 (default: the backend's first device)")
    sub.add_argument(
        "--layers",
        metavar="START:END",
        help="decoder layers START <= i < END only (either may be left out: 16:, :16)",
    )
    sub.add_argument(
        "--verify", action="store_true", help="read every tensor back and compare with the file"
    )
    sub.add_argument(
        "--devices",
        metavar="ID,ID...",
        help="load over several devices at once, in pipeline order (e.g. vulkan:0,host:0)",
    )
    sub.add_argument(
        "--split",
        nargs="+",
        metavar="memory|START:END",
        help="with --devices: 'memory' (by available memory, the default) or one START:END per device",
    )


def _layers(text: str | None) -> LayerRange | None:
    from exo_gpu_plugins.weights import LayerRange

    if text is None:
        return None
    try:
        return LayerRange.parse(text)
    except ValueError as exc:
        raise ValueError(f"--layers {text}: {error_text(exc)}") from exc


async def cmd_load(args: argparse.Namespace, screen: Screen) -> int:
    from exo_gpu_plugins.weights import (
        load_weights,
        plan_checkpoint,
    )

    layers = _layers(args.layers)
    if args.devices is not None:
        from exo_gpu_plugins.cli.load_across import load_across_devices

        return await load_across_devices(args, screen, layers)
    if args.split is not None:
        raise ValueError("--split needs --devices (the devices to split the layers over)")
    plan = plan_checkpoint(args.paths, layers)  # a malformed file fails here, before any allocation
    target = resolve(args.backend, args.device)
    backend = await open_target(target)
    try:
        device = first_device(backend, target)
        with screen.progress(plan.total_bytes, f"loading onto {device}") as advance:
            seen = 0

            def progress(update: LoadProgress) -> None:
                nonlocal seen
                advance(update.bytes_done - seen)
                seen = update.bytes_done

            loaded = await load_weights(backend, device, args.paths, layers=layers, progress=progress)
        try:
            mismatched: list[str] | None = None
            if args.verify:
                with screen.status(f"reading {format_bytes(loaded.total_bytes)} back from {device}"):
                    mismatched = await loaded.verify(backend)
        finally:
            await loaded.deallocate(backend)
    finally:
        await backend.shutdown()
    verified = None if mismatched is None else not mismatched
    summary: dict[str, Any] = {
        "backend": backend.name,
        "device_id": device,
        "files": list(loaded.files),
        "tensors": len(loaded.tensors),
        "bytes": loaded.total_bytes,
        "allocated_bytes": loaded.allocated_bytes,
        "allocations": len(loaded.handles),
        "seconds": loaded.seconds,
        "gb_per_s": loaded.total_bytes / loaded.seconds / 1e9 if loaded.seconds > 0 else None,
        "verified": verified,
        "mismatched_tensors": mismatched,
    }
    if args.json:
        screen.json(summary)
    else:
        rate = f"{summary['gb_per_s']:.2f} GB/s" if summary["gb_per_s"] is not None else "- GB/s"
        check = {
            None: "",
            True: "; every byte read back identical",
            False: f"; BYTES DIFFER in {', '.join(mismatched or [])}",
        }[verified]
        screen.line(
            f"loaded {_count(summary['tensors'], 'tensor')}, {format_bytes(summary['bytes'])} from "
            f"{_count(len(loaded.files), 'file')} onto {device} in {loaded.seconds:.2f} s ({rate}), "
            f"{_count(summary['allocations'], 'allocation')}{check}"
        )
    return 1 if verified is False else 0


def _count(number: int, noun: str) -> str:
    """`1 tensor`, `3 tensors`."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
