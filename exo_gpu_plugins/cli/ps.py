"""`exo-gpu ps`: the processes using each device and the device memory each holds, where the system
can tell (NVML on NVIDIA, DRM fdinfo on amdgpu/i915/xe), and plainly where it cannot."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import TYPE_CHECKING

from exo_gpu_plugins.cli.render import Column
from exo_gpu_plugins.machine import machine_state
from exo_gpu_plugins.registry import get_registry
from exo_gpu_plugins.sizes import format_bytes

if TYPE_CHECKING:
    from exo_gpu_plugins.cli.options import AddCommand
    from exo_gpu_plugins.cli.render import Screen

__all__ = ["cmd_ps", "register"]


def register(add: AddCommand) -> None:
    sub = add("ps", "processes using each device and the memory each holds", cmd_ps)
    sub.add_argument("--backend", help="only this backend's devices")


async def cmd_ps(args: argparse.Namespace, screen: Screen) -> int:
    registry = get_registry()
    names = None if args.backend is None else [registry.entry(args.backend, "--backend").name]
    states = await machine_state(names, registry)
    if args.json:
        screen.json(
            [
                {
                    "device_id": s.device.device_id,
                    "name": s.device.name,
                    "total_bytes": s.memory.total_bytes,
                    "this_process_bytes": s.memory.used_bytes,
                    **asdict(s.usage),
                }
                for s in states
            ]
        )
        return 0
    rows = [
        [s.device.device_id, p.pid, p.name, format_bytes(p.used_bytes), p.source]
        for s in states
        for p in s.usage.processes or ()
    ]
    if rows:
        screen.table(
            [
                Column("device"),
                Column("pid", "right"),
                Column("name"),
                Column("memory", "right"),
                Column("source"),
            ],
            rows,
        )
    for s in states:
        if s.usage.processes is not None and not s.usage.processes:
            screen.line(f"{s.device.device_id}: no process uses it ({s.usage.processes_source})")
        if s.usage.processes_note:
            screen.line(f"{s.device.device_id}: {s.usage.processes_note}")
    return 0
