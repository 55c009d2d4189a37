"""The integers a caller passes (offsets, sizes, a shape's sizes): ints and numpy's integers,
never bools, floats or strings. One rule for the core's arguments and for DLPack views, in a
module that imports nothing of the project's, so both can use it."""

from __future__ import annotations

import operator

__all__ = ["integer", "is_integer"]


def is_integer(value: object) -> bool:
    """An int or an integer type of another library (it has `__index__`), but not a bool."""
    return type(value) is int or (hasattr(type(value), "__index__") and not isinstance(value, bool))


def integer(value: object, name: str) -> int:
    """`value` as an int; bools, floats, None and strings are refused with `TypeError`."""
    if type(value) is int:
        return value
    if not is_integer(value):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return operator.index(value)  # type: ignore[arg-type]
