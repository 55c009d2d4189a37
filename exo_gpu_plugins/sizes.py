"""Byte counts as people write and read them: `64M` in, `64.0 MiB` out, binary units throughout.

Shared by the CLI (arguments, tables) and by backends whose error messages name a size, so that
every message says `3.0 GiB` rather than `3221225472 bytes`.
"""

from __future__ import annotations

import re

__all__ = ["exact_label", "exact_tag", "format_bytes", "parse_size"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_SCALE = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def format_bytes(count: int | None) -> str:
    """1536 -> '1.5 KiB', 512 -> '512 B'; None (a figure not known) -> '-'."""
    if count is None:
        return "-"
    value = float(count)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable: the last unit always matches")


def _exact(count: int) -> tuple[int, str]:
    value, unit = count, "B"
    for larger in _UNITS[1:]:
        if value == 0 or value % 1024:
            break
        value, unit = value // 1024, larger
    return value, unit


def exact_label(count: int) -> str:
    """The size with no rounding, in the largest unit that divides it: 4096 -> '4 KiB'."""
    value, unit = _exact(count)
    return f"{value} {unit}"


def exact_tag(count: int) -> str:
    """Like `exact_label` without the space, for keys: 4096 -> '4KiB', 64 MiB -> '64MiB'."""
    value, unit = _exact(count)
    return f"{value}{unit}"


def parse_size(text: str) -> int:
    """'4096', '64K', '256M', '1.5G', '2GiB' -> bytes. Refuses what is not a whole, positive
    number of bytes ('1.5' is not), with a `ValueError` that shows an example."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (e.g. 4096, 64K, 256M, 1G)")
    number: str = match.group(1)
    unit: str = match.group(2)
    scale = _SCALE[unit.lower()]
    whole, _, fraction = number.partition(".")
    denominator = int(10 ** len(fraction))
    numerator = int(whole or "0") * denominator + int(fraction or "0")
    value, remainder = divmod(numerator * scale, denominator)
    if remainder:
        raise ValueError(f"not a whole number of bytes: {text!r} (e.g. 4096, 64K, 1.5M)")
    if value <= 0:
        raise ValueError(f"size must be > 0: {text!r}")
    return value
