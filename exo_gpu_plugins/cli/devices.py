"""`exo-gpu devices`: every device of every available backend, with memory, in 80 columns."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from exo_gpu_plugins import config
from exo_gpu_plugins.cli.render import Column
from exo_gpu_plugins.errors import GPUError
from exo_gpu_plugins.registry import Registry, get_registry
from exo_gpu_plugins.sizes import format_bytes

if TYPE_CHECKING:
    from exo_gpu_plugins.backend import GPUBackend
    from exo_gpu_plugins.cli import AddCommand
    from exo_gpu_plugins.cli.render import Screen

__all__ = ["cmd_devices", "register"]

log = logging.getLogger("exo_gpu_plugins.cli")

# The name is the one long cell; the uuid and the rest are in `info` and `--json`.
NAME_WIDTH = 28


def register(add: AddCommand) -> None:
    sub = add("devices", "devices of every available backend, with memory", cmd_devices)
    sub.add_argument("--backend", help="only this backend's devices")


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


async def cmd_devices(args: argparse.Namespace, screen: Screen) -> int:
    registry = get_registry()
    if args.backend is not None:
        default = registry.entry(args.backend, "--backend").name
        names = [default]
    else:
        default = registry.select()
        names = registry.names()
    backends = await _open_each(registry, names)
    if args.backend and not backends:
        raise GPUError(f"backend {default!r} could not be opened")
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
        screen.json(rows)
        return 0
    screen.table(
        [
            Column(""),
            Column("id"),
            Column("name", max_width=NAME_WIDTH),
            Column("type"),
            Column("total", "right"),
            Column("available", "right"),
            Column("units", "right"),
        ],
        [
            [
                "*" if r["default"] else "",
                r["device_id"],
                r["name"],
                r["device_type"],
                format_bytes(r["total_bytes"]),
                format_bytes(r["available_bytes"]),
                r["compute_units"],
            ]
            for r in rows
        ],
    )
    source = "--backend" if args.backend else config.requested_backend().source
    screen.line(f"\n* default backend ({source}): {default}")
    return 0
