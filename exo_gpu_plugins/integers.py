"""The integers a caller passes (offsets, sizes, a shape's sizes): ints and numpy's integers,
never bools, floats or strings. One rule for the core's arguments and for DLPack views, in a
module that imports nothing of the project's, so both can use it."""

from __future__ import annotations

import operator

__all__ = ["integer"]


def integer(value: object, name: str) -> int:
    """`value` as an int; bools, floats, None and strings are refused with `TypeError`."""
    if type(value) is int:
        return value
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return operator.index(value)  # type: ignore[arg-type]
