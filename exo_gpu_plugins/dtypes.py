"""Element types and shapes: every dtype a safetensors file may name, with its width and what
DLPack and torch call it (one table, so the checkpoint parser, the DLPack exporter and `to_torch`
agree on which dtypes exist and which of them a consumer can take), and the two shape helpers
they share."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple

from exo_gpu_plugins.quoting import quoted

__all__ = ["DTYPES", "FEW_DIMS", "DType", "are_sizes", "count_elements", "shape_text"]


class DType(NamedTuple):
    """One safetensors dtype."""

    bits: int
    """Bits per element (sub-byte floats pack several elements into a byte)."""
    dlpack_code: int | None
    """DLPack's `DLDataTypeCode` (dlpack.h), or None: no DLPack form a consumer takes element by
    element (the sub-byte floats)."""
    torch_name: str | None
    """The name of torch's dtype, looked up only when torch is imported (F8 types and unsigned
    integers wider than 8 bits exist only in newer releases), or None where torch has none."""


# safetensors' own `Dtype` list, in its order; DLPack codes: 0 int, 1 uint, 2 float, 4 bfloat,
# 5 complex, 6 bool, 10 float8_e4m3fn, 12 float8_e5m2, 14 float8_e8m0fnu.
DTYPES: Mapping[str, DType] = MappingProxyType(
    {
        "BOOL": DType(8, 6, "bool"),
        "F4": DType(4, None, None),
        "F6_E2M3": DType(6, None, None),
        "F6_E3M2": DType(6, None, None),
        "U8": DType(8, 1, "uint8"),
        "I8": DType(8, 0, "int8"),
        "F8_E5M2": DType(8, 12, "float8_e5m2"),
        "F8_E4M3": DType(8, 10, "float8_e4m3fn"),  # safetensors' F8_E4M3 is torch's e4m3fn
        "F8_E8M0": DType(8, 14, "float8_e8m0fnu"),
        "I16": DType(16, 0, "int16"),
        "U16": DType(16, 1, "uint16"),
        "F16": DType(16, 2, "float16"),
        "BF16": DType(16, 4, "bfloat16"),
        "I32": DType(32, 0, "int32"),
        "U32": DType(32, 1, "uint32"),
        "F32": DType(32, 2, "float32"),
        "C64": DType(64, 5, "complex64"),  # two F32s, real then imaginary
        "F64": DType(64, 2, "float64"),
        "I64": DType(64, 0, "int64"),
        "U64": DType(64, 1, "uint64"),
    }
)


# A product of this many sizes (each below 2**64) is cheap to form exactly, in C.
FEW_DIMS = 8
_INT_ONLY = frozenset({int})


def are_sizes(values: Sequence[object], end: int) -> bool:
    """Every value a plain int (not a bool) from 0 to `end` - 1; checked by C loops, since a
    checkpoint holds thousands of shapes."""
    return _INT_ONLY.issuperset(map(type, values)) and (
        not values or (min(values) >= 0 and max(values) < end)  # type: ignore[type-var, operator]
    )


def count_elements(shape: Sequence[int], limit: int) -> int | None:
    """The product of `shape` (sizes >= 0), or None when it passes `limit`: a short shape's is
    formed at once, a long one's only as far as it matters (200,000 large sizes would take
    minutes to multiply out)."""
    if 0 in shape:
        return 0
    if len(shape) <= FEW_DIMS:
        product = math.prod(shape)
        return product if product <= limit else None
    count = 1
    for size in shape:
        count *= size
        if count > limit:
            return None
    return count


def shape_text(shape: object, *, whole: int = 8) -> str:
    """A shape for a message: whole up to `whole` sizes, else its first four and its length."""
    if not isinstance(shape, (list, tuple)):
        return quoted(shape)
    if len(shape) <= whole:
        return repr(list(shape))
    return f"[{', '.join(map(quoted, shape[:4]))}, ...] of {len(shape)} dimensions"
