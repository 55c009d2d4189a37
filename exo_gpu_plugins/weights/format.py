"""The safetensors file format: read one file's header and check it against the file, byte for byte.

A safetensors file is an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the raw
tensor bytes. The JSON maps each tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}`
(offsets relative to the first byte after the header) plus an optional `"__metadata__"` map of
strings. Everything here follows the format's own rules (those the `safetensors` package enforces):
the tensors must cover the data section exactly, with no overlap, no hole and nothing after the
last one, and each byte range must be exactly what its dtype and shape need. Any breach raises
`CheckpointError` naming the file and the tensor, before a caller has allocated anything.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn

from exo_gpu_plugins.dtypes import DTYPES, FEW_DIMS, are_sizes, count_elements, shape_text
from exo_gpu_plugins.errors import CheckpointError
from exo_gpu_plugins.file_copy import open_regular_file
from exo_gpu_plugins.quoting import quoted

__all__ = [
    "MAX_HEADER_BYTES",
    "SafetensorsFile",
    "TensorEntry",
    "load_json",
    "lone_surrogate",
    "parse_header",
    "read_header",
]


# The format's own limit: a longer header is refused rather than read into memory.
MAX_HEADER_BYTES = 100_000_000

_PREFIX = 8
_TENSOR_KEYS = frozenset({"dtype", "shape", "data_offsets"})
# Shapes and offsets are 64-bit unsigned in the format (the reference parser's `usize`).
_COUNT_LIMIT = 1 << 64
_BITS = {name: kind.bits for name, kind in DTYPES.items()}  # a plain dict: looked up per tensor
# An integer longer than this cannot be a size on any machine (2**64 has 20 digits); it is kept as
# a `HugeInteger` rather than converted, which for thousands of digits would be Python's own
# `ValueError` (its int conversion limit) or seconds of work.
_MAX_DIGITS = 20
# A lone UTF-16 surrogate: JSON's `\ud800` escape decodes to one, raw UTF-8 cannot hold one.
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# Every ASCII digit as b"0", every other byte as b" ": a run of `_MAX_DIGITS + 1` zeros is then
# a digit run longer than any size (found by bytes.find, ~0.2 ms for a 100 kB header).
_DIGITS_AS_ZERO = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))
_LONG_RUN = b"0" * (_MAX_DIGITS + 1)


class TensorEntry(NamedTuple):
    """One tensor of a file; `begin`/`end` are absolute offsets in the file (not in the data section).
    (A named tuple: a header of thousands of tensors builds thousands, a frozen dataclass costs
    three times as much each.)"""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True, slots=True)
class SafetensorsFile:
    """A checked header. `identity` (device, inode, size, mtime) lets a loader notice a file that was
    replaced or rewritten after it was checked."""

    path: str
    file_size: int
    data_start: int
    metadata: Mapping[str, str]
    tensors: tuple[TensorEntry, ...]  # in file order
    identity: tuple[int, int, int, int]


def read_header(path: str | os.PathLike[str]) -> SafetensorsFile:
    """Open `path`, read and check its header. Unreadable files raise `CheckpointError` too."""
    name = os.fspath(path)
    fd, stat = open_regular_file(name, CheckpointError)
    try:
        size = stat.st_size
        prefix = _pread_exact(fd, _PREFIX, 0, name, "the header length")
        length = int.from_bytes(prefix, "little") if len(prefix) == _PREFIX else None
        if length is None:
            raise CheckpointError(
                f"{name}: {size} bytes is too short for a safetensors file (no header)"
            )
        _check_length(length, size, name)
        raw = _pread_exact(fd, length, _PREFIX, name, "the header")
        if len(raw) != length:
            raise CheckpointError(f"{name}: file shrank while its header was read")
    finally:
        os.close(fd)
    identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return parse_header(raw, name, size, identity)


def parse_header(
    raw: bytes, path: str, file_size: int, identity: tuple[int, int, int, int] = (0, 0, 0, 0)
) -> SafetensorsFile:
    """Check the JSON header `raw` of a `file_size`-byte file; every tensor must fit the file exactly."""
    _check_length(len(raw), file_size, path)
    # Integers are converted by `int` itself (no Python call per integer) unless the header holds
    # a run of more than 20 digits anywhere: then each goes through `_parse_int`, which keeps the
    # long ones as `HugeInteger` (never a size: refused naming their length, and never converted,
    # which costs quadratic time or hits Python's int limit).
    long_integers = raw.translate(_DIGITS_AS_ZERO).find(_LONG_RUN) >= 0
    document = _decode(raw, path, long_integers)
    return _checked(raw, document, path, file_size, identity)


def _checked(
    raw: bytes,
    document: dict[str, Any],
    path: str,
    file_size: int,
    identity: tuple[int, int, int, int],
) -> SafetensorsFile:
    data_start = _PREFIX + len(raw)
    metadata: dict[str, str] = {}
    tensors: list[TensorEntry] = []
    data_size = file_size - data_start
    for name, value in document.items():
        if name == "__metadata__":
            metadata = _metadata(value, path)
            continue
        if not name:
            raise CheckpointError(f"{path}: a tensor has an empty name")
        tensors.append(_tensor(name, value, path, data_start, data_size))
    tensors.sort(key=lambda t: (t.begin, t.end))
    _check_coverage(tensors, path, data_start, file_size)
    return SafetensorsFile(
        path=path,
        file_size=file_size,
        data_start=data_start,
        metadata=metadata,
        tensors=tuple(tensors),
        identity=identity,
    )


def _pread_exact(fd: int, size: int, offset: int, path: str, what: str) -> bytes:
    parts: list[bytes] = []
    done = 0
    while done < size:
        try:
            chunk = os.pread(fd, size - done, offset + done)
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc
        if not chunk:
            break
        parts.append(chunk)
        done += len(chunk)
    return b"".join(parts)


def _check_length(length: int, file_size: int, path: str) -> None:
    if length > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{path}: header length {length} is larger than the format allows ({MAX_HEADER_BYTES}); "
            "this is not a safetensors file or it is corrupt"
        )
    if _PREFIX + length > file_size:
        raise CheckpointError(
            f"{path}: header length {length} reaches past the end of the {file_size}-byte file"
        )
    if length < 2:
        raise CheckpointError(f"{path}: header length {length} cannot hold a JSON object")


def _decode(raw: bytes, path: str, long_integers: bool) -> dict[str, Any]:
    if raw[:1] != b"{":
        raise CheckpointError(f"{path}: header does not start with a JSON object ('{{')")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(
            f"{path}: header is not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    try:
        document = load_json(text, long_integers=long_integers, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        raise CheckpointError(f"{path}: tensor {exc.key!r}: named twice in the header") from None
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: header is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise CheckpointError(f"{path}: header is JSON but not an object")
    if _SURROGATE_ESCAPE.search(raw):
        try:
            _refuse_lone_surrogates(document, path)
        except RecursionError:
            raise CheckpointError(f"{path}: header nests too deeply to check") from None
    return document


def _refuse_lone_surrogates(document: dict[str, Any], path: str) -> None:
    """Refuse a string holding a lone surrogate (a `\\ud800` escape with no partner), as the
    reference parser does: it is not Unicode, and cannot be written back as UTF-8."""
    for name, value in document.items():
        where = "__metadata__" if name == "__metadata__" else f"tensor {name!r}"
        if _SURROGATE.search(name):
            raise CheckpointError(
                f"{path}: {where}: the name is not valid Unicode (it holds a lone surrogate)"
            )
        bad = lone_surrogate(value)
        if bad is not None:
            raise CheckpointError(
                f"{path}: {where}: the entry holds a string that is not valid Unicode ({bad!r} "
                "holds a lone surrogate)"
            )


def lone_surrogate(value: object) -> str | None:
    """The first string in `value` (a string, or JSON lists and objects, keys included) that holds
    a lone surrogate, else `None`."""
    if isinstance(value, str):
        return value if _SURROGATE.search(value) else None
    items: list[object] = []
    if isinstance(value, dict):
        items = [item for pair in value.items() for item in pair]
    elif isinstance(value, list):
        items = value
    for item in items:
        bad = lone_surrogate(item)
        if bad is not None:
            return bad
    return None


class HugeInteger:
    """A JSON integer of more than 20 digits, kept as its digit count: never a valid size."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"


def _parse_int(text: str) -> int | HugeInteger:
    digits = len(text) - text.startswith("-")
    return HugeInteger(digits) if digits > _MAX_DIGITS else int(text)


def load_json(text: str, *, long_integers: bool = True, **hooks: Any) -> Any:
    """`json.loads` for checkpoint headers and indexes: integers too long to be a size come back as
    `HugeInteger` (never Python's int-conversion `ValueError`). `long_integers=False` promises
    that the text holds no run of more than 20 digits, so `int` converts each integer directly."""
    return json.loads(text, parse_int=_parse_int if long_integers else int, **hooks)


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _metadata(value: object, path: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise CheckpointError(
            f"{path}: __metadata__ must be a map of strings, not {type(value).__name__}"
        )
    for key, item in value.items():
        if not isinstance(item, str):
            found = repr(item) if isinstance(item, HugeInteger) else type(item).__name__
            raise CheckpointError(f"{path}: __metadata__ entry {key!r} must be a string, not {found}")
    return dict(value)


def _tensor(name: str, value: object, path: str, data_start: int, data_size: int) -> TensorEntry:
    if type(value) is not dict:
        where = f"{path}: tensor {name!r}"
        raise CheckpointError(f"{where}: entry must be an object, not {type(value).__name__}")
    try:
        dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    except KeyError:
        missing = ", ".join(sorted(_TENSOR_KEYS - value.keys()))
        raise CheckpointError(f"{path}: tensor {name!r}: entry lacks {missing}") from None
    bits = _BITS.get(dtype) if type(dtype) is str else None
    if bits is None:
        known = ", ".join(DTYPES)
        raise CheckpointError(f"{path}: tensor {name!r}: unknown dtype {quoted(dtype)} (known: {known})")
    if type(shape) is not list or not are_sizes(shape, _COUNT_LIMIT):
        raise CheckpointError(
            f"{path}: tensor {name!r}: shape must be a list of integers from 0 to 2**64 - 1, "
            f"got {shape_text(shape)}"
        )
    if type(offsets) is not list or len(offsets) != 2 or not are_sizes(offsets, _COUNT_LIMIT):
        raise CheckpointError(
            f"{path}: tensor {name!r}: data_offsets must be two integers from 0 to 2**64 - 1, "
            f"got {quoted(offsets)}"
        )
    begin, end = offsets
    if begin > end or end > data_size:
        _refuse_offsets(name, path, begin, end, data_size)
    if len(shape) <= FEW_DIMS:  # exact, for the message below
        bits *= math.prod(shape)
    else:
        count = count_elements(shape, (end - begin) * 8)
        if count is None:
            raise CheckpointError(
                f"{path}: tensor {name!r}: dtype {dtype} and shape {shape_text(shape)} need more "
                f"than the {end - begin} bytes its data_offsets [{begin}, {end}] hold"
            )
        bits *= count
    if bits % 8 or bits // 8 != end - begin:
        need = f"{bits // 8}" + (f".{bits % 8 * 125:03d}".rstrip("0") if bits % 8 else "")  # exact
        raise CheckpointError(
            f"{path}: tensor {name!r}: dtype {dtype} and shape {shape_text(shape)} need {need} "
            f"bytes, but data_offsets [{begin}, {end}] hold {end - begin}"
        )
    return TensorEntry(name, dtype, tuple(shape), data_start + begin, data_start + end)


def _refuse_offsets(name: str, path: str, begin: int, end: int, data_size: int) -> NoReturn:
    where = f"{path}: tensor {name!r}"
    if begin > end:
        raise CheckpointError(f"{where}: data_offsets [{begin}, {end}] end before they begin")
    raise CheckpointError(
        f"{where}: data_offsets [{begin}, {end}] reach past the {data_size}-byte data section "
        "(file truncated?)"
    )


def _check_coverage(tensors: list[TensorEntry], path: str, data_start: int, file_size: int) -> None:
    """Sorted by offset, each tensor must start where the one before ended (zero-byte tensors may
    share an offset), the first at the data start and the last ending at the end of the file."""
    position = data_start
    previous: TensorEntry | None = None
    for tensor in tensors:
        if tensor.begin < position and previous is not None:
            raise CheckpointError(
                f"{path}: tensor {tensor.name!r}: bytes [{tensor.begin - data_start}, "
                f"{tensor.end - data_start}) overlap tensor {previous.name!r} "
                f"[{previous.begin - data_start}, {previous.end - data_start})"
            )
        if tensor.begin > position:
            raise CheckpointError(
                f"{path}: tensor {tensor.name!r}: a hole of {tensor.begin - position} bytes before it "
                f"(data section bytes [{position - data_start}, {tensor.begin - data_start}) belong "
                "to no tensor)"
            )
        position = tensor.end
        if tensor.nbytes or previous is None:
            previous = tensor
    if position != file_size:
        where = f"after tensor {previous.name!r} " if previous is not None else ""
        raise CheckpointError(
            f"{path}: {file_size - position} bytes at the end of the file {where}belong to no "
            "tensor" + ("" if previous is not None else " (the header lists none)")
        )
