"""`exo-gpu plugins`: installed plugins, their backends, availability and load errors."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import TYPE_CHECKING

from exo_gpu_plugins.registry import BackendReport, get_registry

if TYPE_CHECKING:
    from exo_gpu_plugins.cli.options import AddCommand
    from exo_gpu_plugins.cli.render import Screen

__all__ = ["cmd_plugins", "register"]


def register(add: AddCommand) -> None:
    add("plugins", "installed plugins, their backends, availability and load errors", cmd_plugins)


def cmd_plugins(args: argparse.Namespace, screen: Screen) -> int:
    rows = get_registry().report()
    if args.json:
        screen.json([asdict(row) for row in rows])
        return 0
    screen.table(
        ["plugin", "distribution", "version", "backend", "priority", "status"],
        [
            [row.plugin, row.distribution, row.version, row.backend, _priority(row), _status(row)]
            for row in rows
        ],
    )
    return 0


def _priority(row: BackendReport) -> str | None:
    if row.priority is None:
        return None
    return f"{row.priority}" if row.automatic else f"{row.priority} (by name only)"


def _status(row: BackendReport) -> str:
    if row.status != "loaded":
        return f"{row.status}: {row.error}" if row.error else row.status
    if row.available is False:
        return f"unavailable: {row.unavailable_reason}"
    return "available"
