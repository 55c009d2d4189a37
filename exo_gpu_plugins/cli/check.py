"""`exo-gpu check BACKEND`: the conformance kit against an installed backend; exit 1 on a failure."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from exo_gpu_plugins.cli.options import positive_int
from exo_gpu_plugins.errors import GPUError

if TYPE_CHECKING:
    from exo_gpu_plugins.cli.options import AddCommand
    from exo_gpu_plugins.cli.render import Screen

__all__ = ["cmd_check", "register"]


def register(add: AddCommand) -> None:
    sub = add(
        "check", "run the conformance kit against an installed backend; exit 1 on any failure", cmd_check
    )
    sub.add_argument("backend", help="backend name, e.g. host or vulkan")
    sub.add_argument("--xfail", help="expected-failures file: 'test_id  # reason' per line")
    sub.add_argument("--examples", type=positive_int, help="Hypothesis examples for the state machine")
    sub.add_argument("-v", "--verbose", action="store_true", help="show every test")


def cmd_check(args: argparse.Namespace, screen: Screen) -> int:
    try:
        from exo_gpu_plugins.testing.check import run_check
    except ImportError as exc:
        raise GPUError(
            f"the conformance kit needs pytest, hypothesis and numpy: pip install "
            f"'exo-gpu-plugins[testing]' ({exc})"
        ) from exc
    status: int = run_check(
        args.backend.strip().lower(),
        xfail_file=args.xfail,
        examples=args.examples,
        verbose=args.verbose,
        json_output=args.json,
        out=screen.out,
        err=screen.err,
    )
    return status
