"""`exo-gpu`: inspect plugins and devices, check a backend against the contract, measure copies,
load weights.

One module per command (each defines `register(add)` and its handler `cmd_<name>`); render.py draws
the output. Every command takes `--json` for scripts. An error prints one line on stderr and exits
with status 2 (`--debug`, before or after the command, adds the traceback and verbose logs but
never changes the status). A closed pipe (`exo-gpu devices | head -1`) ends the command quietly,
with status 0.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from exo_gpu_plugins.errors import GPUError
from exo_gpu_plugins.sizes import parse_size

__all__ = ["build_parser", "main"]

log = logging.getLogger("exo_gpu_plugins.cli")

Handler = Callable[[argparse.Namespace, Any], Any]
AddCommand = Callable[[str, str, Handler], argparse.ArgumentParser]

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def size_argument(text: str) -> int:
    """argparse type for byte sizes: 4096, 64K, 256M, 1.5G; fractions of a byte are refused."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1 (`--count 0` would do nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _version() -> str:
    from importlib import metadata

    from exo_gpu_plugins import __version__

    try:
        return metadata.version("exo-gpu-plugins")
    except metadata.PackageNotFoundError:
        return __version__


def build_parser() -> argparse.ArgumentParser:
    from exo_gpu_plugins.cli import bench, check, devices, info, load, monitor, plugins, roundtrip

    parser = argparse.ArgumentParser(
        prog="exo-gpu",
        description="GPU memory backends for exo: list plugins and devices, inspect a device, "
        "round-trip bytes, load weights, check a backend against the contract, measure copy speed.",
        epilog="Backend choice: --backend (or the backend of --device) > EXO_GPU_BACKEND > "
        "[gpu] backend in exo's config (EXO_CONFIG_FILE or ~/.config/exo/config.toml) > automatic. "
        "Sizes: 4096, 64K, 256M, 1G (binary units).",
    )
    parser.add_argument("--version", action="version", version=f"exo-gpu {_version()}")
    parser.add_argument("--debug", action="store_true", help="log verbosely, show tracebacks")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    # SUPPRESS: a --debug given before the command is not reset by the command's default.
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, parents=[common])
        sub.set_defaults(handler=handler)
        return sub

    for module in (plugins, devices, info, roundtrip, load, check, bench, monitor):
        module.register(add)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Entry point of `exo-gpu`; returns the exit status."""
    from exo_gpu_plugins.cli import interrupt
    from exo_gpu_plugins.cli.render import Screen

    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="exo-gpu: %(levelname)s: %(message)s",
        stream=err,
        force=True,
    )
    screen = Screen(out, err)
    try:
        result = args.handler(args, screen)
        status: int = interrupt.run(result) if inspect.iscoroutine(result) else result
        out.flush()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout(out)
        return 0
    except (GPUError, ValueError, TypeError, OSError) as exc:
        if debug:
            traceback.print_exc(file=err)
        err.write(f"exo-gpu: error: {exc}\n")
        return EXIT_ERROR
    return status


def _silence_stdout(out: TextIO) -> None:
    """The reader went away (`| head`): like other Unix tools, stop quietly. Point stdout at
    /dev/null so the interpreter's final flush cannot raise again."""
    if out is not sys.stdout:
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        log.debug("could not redirect stdout after a broken pipe")


def run() -> None:
    """`python -m exo_gpu_plugins.cli`."""
    sys.exit(main())
