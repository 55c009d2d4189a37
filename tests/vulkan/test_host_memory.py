"""Pinned (engine-allocated) and registered (caller) host memory and file reads straight into device
memory, through the native engine, under every transfer strategy (EXO_VULKAN_TRANSFER's values)."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exo_gpu_plugins.errors import BackendUnavailableError, FileReadError, OutOfBoundsError
from tests.vulkan.strategies import STRATEGIES

MiB = 1 << 20


@pytest.fixture(params=STRATEGIES)
def engine(request: pytest.FixtureRequest) -> Iterator[Any]:
    from exo_gpu_vulkan._native import Engine

    validation = os.environ.get("EXO_VULKAN_VALIDATION") == "1"
    try:
        e = Engine(validation=validation, strategy=request.param)
    except BackendUnavailableError as exc:
        pytest.skip(f"strategy {request.param} unavailable: {exc}")
    yield e
    e.close()


def _pinned_moved(engine: Any) -> int:
    return int(engine.stats(0)["pinned_bytes"])


def test_pinned_memory_round_trip(engine: Any) -> None:
    size = 20 * MiB + 7
    src = engine.host_alloc(0, size)
    dst = engine.host_alloc(0, size)
    view = src.view()
    assert len(src) == size and view.nbytes == size and not view.readonly and view.format == "B"
    assert view[:4096] == bytes(4096), "pinned memory starts zeroed"
    payload = os.urandom(size)
    view[:] = payload
    alloc = engine.allocate(0, size + 64)
    engine.write(alloc, 64, view)
    out = dst.view()
    engine.read_into(alloc, 64, out)
    assert out == payload
    engine.read_into(alloc, 65, out[10:5000])
    assert out[10:5000] == payload[1:4991]
    if engine.stats(0)["strategy"] != "mapped":
        assert _pinned_moved(engine) >= 2 * size
    assert src.pinned
    src.release()
    src.release()  # idempotent
    assert not src.pinned
    # The memory outlives the object and the engine while a view exists.
    del src
    gc.collect()
    view[:3] = b"abc"
    assert view[:3] == b"abc"
    engine.free(alloc)


def test_registered_buffer_round_trip(engine: Any) -> None:
    if engine.device_info(0)["min_imported_host_pointer_alignment"] is None:
        pytest.skip("no VK_EXT_external_memory_host here")
    size = 20 * MiB + 3
    src = bytearray(os.urandom(size + 13))
    dst = bytearray(size + 5)
    src_view, dst_view = memoryview(src)[13:], memoryview(dst)[5:]
    rs = engine.host_register(0, src_view)
    rd = engine.host_register(0, dst_view)
    alloc = engine.allocate(0, size)
    engine.write(alloc, 0, src_view)
    engine.read_into(alloc, 0, dst_view)
    assert dst_view == src_view
    if engine.stats(0)["strategy"] != "mapped":
        assert _pinned_moved(engine) >= 2 * size
    with pytest.raises(BufferError):
        src.extend(b"x")  # registered: exported, cannot move
    engine.host_unregister(rs)
    with pytest.raises(ValueError):
        engine.host_unregister(rs)
    src_view.release()
    src.extend(b"x")  # released again
    engine.host_unregister(rd)
    engine.free(alloc)


def test_write_from_file(engine: Any, tmp_path: Path) -> None:
    size = 40 * MiB + 3
    data = os.urandom(size)
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    alloc = engine.allocate(0, size + 8)
    with path.open("rb") as f:
        engine.write_from_file(alloc, 7, f.fileno(), 11, size - 11)
        assert engine.read(alloc, 7, size - 11) == data[11:]
        assert engine.read(alloc, 0, 7) == bytes(7)
        with pytest.raises(FileReadError, match="short read"):
            engine.write_from_file(alloc, 0, f.fileno(), 20, size)
        with pytest.raises(OutOfBoundsError):
            engine.write_from_file(alloc, 9, f.fileno(), 0, size)
    with pytest.raises(FileReadError):
        engine.write_from_file(alloc, 0, 1 << 20, 0, 4096)
    engine.free(alloc)
