"""`exo-gpu devices`: every device of every available backend, with its memory: the whole
device's use where the system can tell (every process, as nvidia-smi shows it) and what is
available; `exo-gpu ps` lists the processes."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from exo_gpu_plugins import config
from exo_gpu_plugins.cli.render import Column
from exo_gpu_plugins.machine import machine_state
from exo_gpu_plugins.registry import get_registry
from exo_gpu_plugins.sizes import format_bytes

if TYPE_CHECKING:
    from exo_gpu_plugins.cli.options import AddCommand
    from exo_gpu_plugins.cli.render import Screen

__all__ = ["cmd_devices", "register"]


def register(add: AddCommand) -> None:
    sub = add("devices", "devices of every available backend, with memory", cmd_devices)
    sub.add_argument("--backend", help="only this backend's devices")


async def cmd_devices(args: argparse.Namespace, screen: Screen) -> int:
    registry = get_registry()
    if args.backend is not None:
        default = registry.entry(args.backend, "--backend").name
        states = await machine_state([default], registry)
    else:
        default = registry.select()
        states = await machine_state(None, registry)
    if args.json:
        screen.json(
            [
                {
                    **state.device.model_dump(mode="json"),
                    "total_bytes": state.memory.total_bytes,
                    "available_bytes": state.memory.available_bytes,
                    "used_bytes": state.memory.used_bytes,
                    "memory_source": state.memory.source,
                    "device_used_bytes": state.usage.device_used_bytes,
                    "device_used_source": state.usage.device_used_source,
                    "device_used_note": state.usage.device_used_note,
                    "export_kinds": list(state.export_kinds),
                    "default": state.device.device_id.partition(":")[0] == default,
                }
                for state in states
            ]
        )
        return 0
    screen.table(
        [
            Column(""),
            Column("id"),
            Column("name"),
            Column("type"),
            Column("total", "right"),
            Column("used", "right"),
            Column("available", "right"),
            Column("units", "right"),
            Column("exports"),
        ],
        [
            [
                "*" if s.device.device_id.partition(":")[0] == default else "",
                s.device.device_id,
                s.device.name,
                s.device.device_type.value,
                format_bytes(s.memory.total_bytes),
                format_bytes(s.usage.device_used_bytes),
                format_bytes(s.memory.available_bytes),
                s.device.compute_units,
                ", ".join(s.export_kinds) or "-",
            ]
            for s in states
        ],
    )
    source = "--backend" if args.backend else config.requested_backend().source
    screen.line(f"\n* default backend ({source}): {default}")
    if any(s.export_kinds for s in states):
        screen.line(
            "exports: cpu = viewed in place from the CPU, fd = shared with other processes, "
            "cuda = viewed as CUDA memory (docs/interop.md)"
        )
    for state in states:
        if state.usage.device_used_note:
            screen.line(f"{state.device.device_id}: {state.usage.device_used_note}")
    return 0
