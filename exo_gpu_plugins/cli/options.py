"""What the CLI's commands share: argument types, exit statuses and the one-line error text
(kept apart from cli/__init__.py, which imports every command, so no command imports it back)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from exo_gpu_plugins.errors import GPUError
from exo_gpu_plugins.sizes import parse_size

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "AddCommand",
    "Handler",
    "UsageError",
    "error_text",
    "positive_float",
    "positive_int",
    "size_argument",
]

Handler = Callable[[argparse.Namespace, Any], Any]
AddCommand = Callable[[str, str, Handler], argparse.ArgumentParser]

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """The command line itself is wrong (argparse's complaint), reported like any other error."""


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


def error_text(exc: BaseException) -> str:
    """An exception as one line: pydantic's validation errors as their messages alone (no
    locations, no URL), an unexpected exception type named, every line joined."""
    errors = getattr(exc, "errors", None)
    if type(exc).__name__ == "ValidationError" and callable(errors):
        parts = [str(e.get("msg", "")).removeprefix("Value error, ") for e in errors()]
        text = "; ".join(part for part in parts if part)
    else:
        text = str(exc)
        expected = (GPUError, ValueError, TypeError, OSError, UsageError)
        if not isinstance(exc, expected):
            text = f"{type(exc).__name__}: {text} (an unexpected error; --debug shows where)"
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__
