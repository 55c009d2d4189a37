"""How an error message quotes a value it refuses: in full when short, cut short when long, since
the value may come from a file or a peer and run to megabytes, or be an integer too long for
Python to print."""

from __future__ import annotations

import math

__all__ = ["quoted"]


def quoted(value: object, limit: int = 80) -> str:
    """`repr(value)`, or its first characters and its length when longer than `limit`."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 100:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text)} characters)"
