"""Every malformed checkpoint is refused with CheckpointError naming the file and the tensor, before
anything is allocated: afterwards the backend holds no handle and its used memory is unchanged."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import CheckpointError
from exo_gpu_plugins.weights import load_weights, plan_checkpoint
from exo_gpu_plugins.weights.format import MAX_HEADER_BYTES, parse_header, read_header
from exo_gpu_plugins.weights.synthetic import LlamaShape, write_llama, write_safetensors

T = "model.layers.0.mlp.up_proj.weight"


def raw_file(
    path: Path, header: dict[str, Any] | bytes, data: bytes = b"", length: int | None = None
) -> Path:
    """A file with this header (a dict is JSON-encoded) and data, and optionally a forged length."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes((len(raw) if length is None else length).to_bytes(8, "little") + raw + data)
    return path


def entry(
    dtype: str = "F32", shape: list[int] | None = None, offsets: list[int] | None = None
) -> dict[str, Any]:
    return {"dtype": dtype, "shape": [2] if shape is None else shape, "data_offsets": offsets or [0, 8]}


def good(tmp: Path) -> Path:
    return raw_file(tmp / "good.safetensors", {T: entry()}, bytes(8))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _index(folder: Path, weight_map: dict[str, Any], *_made: object) -> Path:
    return _write(
        folder / "model.safetensors.index.json", json.dumps({"weight_map": weight_map}).encode()
    )


def _two_indexes(folder: Path) -> Path:
    good(folder)
    for name in ("a", "b"):
        _write(
            folder / f"{name}.safetensors.index.json",
            json.dumps({"weight_map": {T: "good.safetensors"}}).encode(),
        )
    return folder


def _drop_shard(folder: Path, number: int) -> Path:
    index = write_llama(folder, LlamaShape(layers=6), shards=3)
    (folder / f"model-{number:05d}-of-00003.safetensors").unlink()
    return index


def _corrupt_shard(folder: Path) -> Path:
    index = write_llama(folder, LlamaShape(layers=6), shards=3)
    shard = folder / "model-00003-of-00003.safetensors"
    header = read_header(shard)
    head = next(t for t in header.tensors if t.name == "lm_head.weight")
    with open(shard, "r+b") as handle:  # widen lm_head's shape: its byte range no longer fits
        raw = handle.read(header.data_start)
        text = raw[8:].decode()
        begin = head.begin - header.data_start
        text = text.replace(
            f'"shape":[256,64],"data_offsets":[{begin}', f'"shape":[256,65],"data_offsets":[{begin}'
        )
        handle.seek(8)
        handle.write(text.encode())
    return index


# (case id, builder writing the bad checkpoint and returning what to load, text the message must hold)
Case = tuple[str, Callable[[Path], Path], tuple[str, ...]]

CASES: list[Case] = [
    ("empty file", lambda d: _write(d / "a.safetensors", b""), ("a.safetensors", "too short")),
    (
        "7 bytes",
        lambda d: _write(d / "a.safetensors", b"\x02\x00\x00\x00\x00\x00\x00"),
        ("a.safetensors", "too short"),
    ),
    (
        "length past the file",
        lambda d: raw_file(d / "a.safetensors", {T: entry()}, bytes(8), length=4096),
        ("a.safetensors", "past the end"),
    ),
    (
        "absurd length",
        lambda d: raw_file(d / "a.safetensors", b"{}", length=MAX_HEADER_BYTES + 1),
        ("a.safetensors", "larger than the format allows"),
    ),
    (
        "length 2**64-1",
        lambda d: raw_file(d / "a.safetensors", b"{}", length=2**64 - 1),
        ("a.safetensors", "larger"),
    ),
    (
        "bad json",
        lambda d: raw_file(d / "a.safetensors", b"{not json"),
        ("a.safetensors", "not valid JSON"),
    ),
    (
        "truncated json",
        lambda d: raw_file(d / "a.safetensors", json.dumps({T: entry()}).encode()[:-3]),
        ("a.safetensors", "JSON"),
    ),
    ("json array", lambda d: raw_file(d / "a.safetensors", b"[1, 2]"), ("a.safetensors", "JSON object")),
    (
        "not utf-8",
        lambda d: raw_file(d / "a.safetensors", b'{"\xff\xfe": 1}'),
        ("a.safetensors", "UTF-8"),
    ),
    (
        "deeply nested json",
        lambda d: raw_file(d / "a.safetensors", b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}"),
        ("a.safetensors", "JSON"),
    ),
    (
        "duplicate tensor in header",
        lambda d: raw_file(
            d / "a.safetensors",
            f'{{"{T}": {json.dumps(entry())}, "{T}": {json.dumps(entry())}}}'.encode(),
            bytes(8),
        ),
        ("a.safetensors", T, "twice"),
    ),
    (
        "unknown dtype",
        lambda d: raw_file(d / "a.safetensors", {T: entry(dtype="F12")}, bytes(8)),
        ("a.safetensors", T, "unknown dtype", "F12"),
    ),
    (
        "dtype not a string",
        lambda d: raw_file(d / "a.safetensors", {T: entry(dtype=4)}, bytes(8)),
        ("a.safetensors", T, "dtype"),
    ),  # type: ignore[arg-type]
    (
        "shape too big for bytes",
        lambda d: raw_file(d / "a.safetensors", {T: entry(shape=[3])}, bytes(8)),
        ("a.safetensors", T, "need 12 bytes", "hold 8"),
    ),
    (
        "shape too small for bytes",
        lambda d: raw_file(d / "a.safetensors", {T: entry(shape=[1])}, bytes(8)),
        ("a.safetensors", T, "need 4 bytes"),
    ),
    (
        "sub-byte dtype, odd elements",
        lambda d: raw_file(
            d / "a.safetensors", {T: entry(dtype="F4", shape=[3], offsets=[0, 2])}, bytes(2)
        ),
        ("a.safetensors", T, "need 1.5 bytes"),
    ),
    (
        "negative dimension",
        lambda d: raw_file(d / "a.safetensors", {T: entry(shape=[-2])}, bytes(8)),
        ("a.safetensors", T, "shape"),
    ),
    (
        "bool dimension",
        lambda d: raw_file(d / "a.safetensors", {T: entry(shape=[True, 2])}, bytes(8)),
        ("a.safetensors", T, "shape"),
    ),
    (
        "float dimension",
        lambda d: raw_file(d / "a.safetensors", {T: entry(shape=[2.0])}, bytes(8)),
        ("a.safetensors", T, "shape"),
    ),  # type: ignore[list-item]
    (
        "shape not a list",
        lambda d: raw_file(
            d / "a.safetensors", {T: {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}}, bytes(8)
        ),
        ("a.safetensors", T, "shape"),
    ),
    (
        "missing data_offsets",
        lambda d: raw_file(d / "a.safetensors", {T: {"dtype": "F32", "shape": [2]}}, bytes(8)),
        ("a.safetensors", T, "data_offsets"),
    ),
    (
        "three offsets",
        lambda d: raw_file(d / "a.safetensors", {T: entry(offsets=[0, 4, 8])}, bytes(8)),
        ("a.safetensors", T, "data_offsets"),
    ),
    (
        "negative offset",
        lambda d: raw_file(d / "a.safetensors", {T: entry(offsets=[-8, 0])}, bytes(8)),
        ("a.safetensors", T, "data_offsets"),
    ),
    (
        "end before begin",
        lambda d: raw_file(d / "a.safetensors", {T: entry(offsets=[8, 0])}, bytes(8)),
        ("a.safetensors", T, "end before"),
    ),
    (
        "offsets past the data",
        lambda d: raw_file(d / "a.safetensors", {T: entry(offsets=[8, 16])}, bytes(8)),
        ("a.safetensors", T, "past the 8-byte data section"),
    ),
    (
        "file truncated",
        lambda d: raw_file(d / "a.safetensors", {T: entry(shape=[4], offsets=[0, 16])}, bytes(12)),
        ("a.safetensors", T, "truncated"),
    ),
    (
        "entry not an object",
        lambda d: raw_file(d / "a.safetensors", {T: [0, 8]}, bytes(8)),
        ("a.safetensors", T, "object"),
    ),
    (
        "empty tensor name",
        lambda d: raw_file(d / "a.safetensors", {"": entry()}, bytes(8)),
        ("a.safetensors", "empty name"),
    ),
    (
        "overlapping tensors",
        lambda d: raw_file(
            d / "a.safetensors",
            {T: entry(shape=[2], offsets=[0, 8]), "x": entry(shape=[2], offsets=[4, 12])},
            bytes(12),
        ),
        ("a.safetensors", "'x'", T, "overlap"),
    ),
    (
        "same range twice",
        lambda d: raw_file(d / "a.safetensors", {T: entry(), "x": entry()}, bytes(8)),
        ("a.safetensors", "overlap"),
    ),
    (
        "hole between tensors",
        lambda d: raw_file(
            d / "a.safetensors", {T: entry(offsets=[0, 8]), "x": entry(offsets=[12, 20])}, bytes(20)
        ),
        ("a.safetensors", "'x'", "hole"),
    ),
    (
        "hole at the start",
        lambda d: raw_file(d / "a.safetensors", {T: entry(offsets=[4, 12])}, bytes(12)),
        ("a.safetensors", T, "hole"),
    ),
    (
        "bytes after the last tensor",
        lambda d: raw_file(d / "a.safetensors", {T: entry()}, bytes(9)),
        ("a.safetensors", T, "1 bytes at the end"),
    ),
    (
        "metadata not a map",
        lambda d: raw_file(d / "a.safetensors", {"__metadata__": [1, 2], T: entry()}, bytes(8)),
        ("a.safetensors", "__metadata__"),
    ),
    (
        "metadata value not a string",
        lambda d: raw_file(
            d / "a.safetensors", {"__metadata__": {"format": {"x": 1}}, T: entry()}, bytes(8)
        ),
        ("a.safetensors", "__metadata__", "'format'"),
    ),
    (
        "metadata null",
        lambda d: raw_file(d / "a.safetensors", {"__metadata__": None, T: entry()}, bytes(8)),
        ("a.safetensors", "__metadata__"),
    ),
    ("not a file", lambda d: d, ("holds no *.safetensors",)),
    ("no such path", lambda d: d / "missing.safetensors", ("missing.safetensors", "no such file")),
    (
        "missing shard",
        lambda d: _drop_shard(d, 2),
        ("model-00002-of-00003.safetensors", "does not exist", "model.safetensors.index.json"),
    ),
    (
        "index bad json",
        lambda d: _write(d / "model.safetensors.index.json", b"{weight_map"),
        ("model.safetensors.index.json", "JSON"),
    ),
    (
        "index without weight_map",
        lambda d: _write(d / "model.safetensors.index.json", b'{"metadata": {}}'),
        ("model.safetensors.index.json", "weight_map"),
    ),
    (
        "index weight_map empty",
        lambda d: _write(d / "model.safetensors.index.json", b'{"weight_map": {}}'),
        ("model.safetensors.index.json", "no tensor"),
    ),
    (
        "index shard escapes",
        lambda d: _index(d, {T: "../x.safetensors"}),
        ("model.safetensors.index.json", T, "relative"),
    ),
    (
        "index shard absolute",
        lambda d: _index(d, {T: "/etc/passwd"}),
        ("model.safetensors.index.json", T, "relative"),
    ),
    ("index shard not a string", lambda d: _index(d, {T: 3}), ("model.safetensors.index.json", T)),
    (
        "index places tensor in the wrong shard",
        lambda d: _index(d, {T: "good.safetensors", "y": "good.safetensors"}, good(d)),
        ("good.safetensors", "'y'", "lacks it"),
    ),
    (
        "shard holds a tensor the index lacks",
        lambda d: _index(
            d,
            {"y": "other.safetensors", T: "missing.safetensors"},
            raw_file(d / "other.safetensors", {"y": entry(), "z": entry(offsets=[8, 16])}, bytes(16)),
        ),
        ("other.safetensors", "'z'", "not in the index"),
    ),
    (
        "duplicate tensor across files",
        lambda d: (good(d), shutil.copy(d / "good.safetensors", d / "copy.safetensors")) and d,
        ("copy.safetensors", "good.safetensors", T, "also in"),
    ),
    (
        "bad shard behind an index",
        _corrupt_shard,
        ("model-00003-of-00003.safetensors", "lm_head.weight"),
    ),
    ("several indexes in a folder", _two_indexes, ("several indexes",)),
]


@pytest.mark.parametrize("build,expected", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
async def test_refused_before_allocating(
    build: Callable[[Path], Path],
    expected: tuple[str, ...],
    tmp_path: Path,
    backend: GPUBackend[Any],
    device: str,
) -> None:
    target = build(tmp_path)
    before = (await backend.get_device_memory_info(device)).used_bytes
    with pytest.raises(CheckpointError) as raised:
        await load_weights(backend, device, target)
    message = str(raised.value)
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"
    assert isinstance(raised.value, ValueError)
    assert backend.live_handles() == []
    assert (await backend.get_device_memory_info(device)).used_bytes == before
    # The backend still works afterwards: a good file loads.
    (tmp_path / "ok").mkdir()
    loaded = await load_weights(backend, device, good(tmp_path / "ok"))
    assert await loaded.read(backend, T) == bytes(8)
    await loaded.deallocate(backend)
    assert backend.live_handles() == []


@pytest.mark.parametrize("build,expected", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_plan_refuses(build: Callable[[Path], Path], expected: tuple[str, ...], tmp_path: Path) -> None:
    with pytest.raises(CheckpointError):
        plan_checkpoint(build(tmp_path))


def test_good_file_parses(tmp_path: Path) -> None:
    header = read_header(good(tmp_path))
    assert [(t.name, t.dtype, t.shape, t.nbytes) for t in header.tensors] == [(T, "F32", (2,), 8)]
    assert header.metadata == {}


def test_zero_byte_tensors_may_share_an_offset(tmp_path: Path) -> None:
    header = {
        "e1": entry(shape=[0], offsets=[8, 8]),
        T: entry(),
        "e0": entry(shape=[2, 0], offsets=[0, 0]),
    }
    parsed = read_header(raw_file(tmp_path / "z.safetensors", header, bytes(8)))
    assert sorted(t.name for t in parsed.tensors) == sorted(header)


def test_header_padding_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    write_safetensors(path, [(T, "BF16", (3, 5))], metadata={"format": "pt", "note": "x"})
    parsed = read_header(path)
    assert parsed.data_start % 8 == 0
    assert parsed.metadata == {"format": "pt", "note": "x"}
    assert parsed.tensors[0].nbytes == 30


def test_parse_header_checks_its_own_length() -> None:
    with pytest.raises(CheckpointError, match="past the end"):
        parse_header(b'{"a": 1}', "x.safetensors", 10)
