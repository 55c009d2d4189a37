"""`exo-gpu`: inspect plugins and devices, check a backend against the contract, measure copies,
load weights.

One module per command (each defines `register(add)` and its handler `cmd_<name>`); options.py
holds what they share (argument types, exit statuses, the one-line error text); render.py draws
the output. The commands import nothing from this module, so the CLI's imports run one way.
Every command (and `--version`) takes `--json` for scripts. Every error, argparse's included,
prints one line on stderr (with `--json`, one JSON object) and exits with status 2 (`--debug`,
before or after the command, adds the traceback and verbose logs but never changes the status).
No command prints the help. A closed pipe (`exo-gpu devices | head -1`) ends the command
quietly, with status 0.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn, TextIO

from exo_gpu_plugins.cli.options import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    Handler,
    UsageError,
    error_text,
)

__all__ = ["build_parser", "main"]

log = logging.getLogger("exo_gpu_plugins.cli")


class _Parser(argparse.ArgumentParser):
    """argparse, except that a bad command line raises `UsageError` instead of printing the usage
    and exiting: `main` reports it in one line, like every other error."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _version() -> str:
    from importlib import metadata

    from exo_gpu_plugins import __version__

    try:
        return metadata.version("exo-gpu-plugins")
    except metadata.PackageNotFoundError:
        return __version__


def build_parser() -> argparse.ArgumentParser:
    from exo_gpu_plugins.cli import (
        bench,
        check,
        devices,
        info,
        load,
        monitor,
        plugins,
        ps,
        roundtrip,
    )

    parser = _Parser(
        prog="exo-gpu",
        description="GPU memory backends for exo: list plugins and devices, inspect a device, "
        "round-trip bytes, load weights, check a backend against the contract, measure copy speed.",
        epilog="Backend choice: --backend (or the backend of --device) > EXO_GPU_BACKEND > "
        "[gpu] backend in exo's config (EXO_CONFIG_FILE or ~/.config/exo/config.toml) > automatic. "
        "Sizes: 4096, 64K, 256M, 1G (binary units).",
    )
    parser.add_argument("--version", action="store_true", help="print the installed version")
    parser.add_argument("--debug", action="store_true", help="log verbosely, show tracebacks")
    parser.add_argument("--json", action="store_true", help="print JSON (with --version)")
    common = _Parser(add_help=False)
    # SUPPRESS: a --json given before the command is not reset by the command's default.
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON instead of a table"
    )
    # SUPPRESS: a --debug given before the command is not reset by the command's default.
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, parents=[common])
        sub.set_defaults(handler=handler)
        return sub

    for module in (plugins, devices, ps, info, roundtrip, load, check, bench, monitor):
        module.register(add)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Entry point of `exo-gpu`; returns the exit status."""
    from exo_gpu_plugins.cli import interrupt
    from exo_gpu_plugins.cli.render import Screen

    out = out or sys.stdout
    err = err or sys.stderr
    words = list(sys.argv[1:] if argv is None else argv)
    # Known before parsing, so that a bad command line is reported the way the user asked.
    debug = "--debug" in words
    as_json = "--json" in words
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="exo-gpu: %(levelname)s: %(message)s",
        stream=err,
        force=True,
    )
    screen = Screen(out, err)
    parser = build_parser()
    try:
        args = parser.parse_args(words)
        if args.version:
            version = _version()
            if args.json:
                screen.json({"version": version})
            else:
                screen.line(f"exo-gpu {version}")
            return 0
        if args.command is None:
            parser.print_help(out)
            return 0
        result = args.handler(args, screen)
        status: int = interrupt.run(result) if inspect.iscoroutine(result) else result
        out.flush()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout(out)
        return 0
    except Exception as exc:
        if debug:
            traceback.print_exc(file=err)
        _report(exc, err, as_json=as_json)
        return EXIT_ERROR
    return status


def _report(exc: Exception, err: TextIO, *, as_json: bool) -> None:
    """One line on stderr (one JSON object with `--json`): the message, never a traceback."""
    message = error_text(exc)
    if as_json:
        record = {"error": message, "type": type(exc).__name__, "exit_status": EXIT_ERROR}
        err.write(json.dumps(record) + "\n")
    else:
        err.write(f"exo-gpu: error: {message}\n")
    err.flush()


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
