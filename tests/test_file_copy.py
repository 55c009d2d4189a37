"""copy_file_to_device on the core's side: what it accepts, what it refuses before writing, and the
default pipeline every backend inherits (tried through a backend that does not override it)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exo_gpu_plugins import file_copy
from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import FileReadError, OutOfBoundsError
from exo_gpu_plugins.host.backend import HostBackend


class DefaultPipelineHost(HostBackend):
    """The host backend with the core's default `_write_from_file` (chunked reads + `_write`)."""

    async def _write_from_file(
        self, native: bytearray, offset: int, fd: int, file_offset: int, size: int
    ) -> None:
        await GPUBackend._write_from_file(self, native, offset, fd, file_offset, size)


@pytest.fixture(params=[HostBackend, DefaultPipelineHost])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[HostBackend]:
    instance = request.param()
    await instance.initialize()
    yield instance
    await instance.shutdown()


@pytest.fixture
def data_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(3 * 4096 + 17)
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    return path, data


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of one page, so that small files take both paths' many-chunk loops."""
    monkeypatch.setattr(file_copy, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(file_copy, "DIRECT_CHUNK_BYTES", 4096)


async def test_whole_file_by_path_fd_and_file_object(
    backend: HostBackend, data_file: tuple[Path, bytes]
) -> None:
    path, data = data_file
    handle = await backend.allocate("host:0", len(data) + 100)
    assert await backend.copy_file_to_device(path, handle, 100) == len(data)
    assert await backend.copy_from_device(handle, 100, len(data)) == data
    with path.open("rb") as f:
        f.seek(5)
        assert await backend.copy_file_to_device(f, handle, file_offset=1, size_bytes=4097) == 4097
        assert f.tell() == 5  # pread: the caller's position is not moved
        assert await backend.copy_from_device(handle, 0, 4097) == data[1:4098]
        assert await backend.copy_file_to_device(f.fileno(), handle, 0, size_bytes=0) == 0


async def test_out_of_range_is_refused_before_anything_is_written(
    backend: HostBackend, data_file: tuple[Path, bytes]
) -> None:
    path, data = data_file
    handle = await backend.allocate("host:0", len(data))
    with pytest.raises(OutOfBoundsError, match="file"):
        await backend.copy_file_to_device(path, handle, file_offset=10, size_bytes=len(data))
    with pytest.raises(OutOfBoundsError, match="file"):
        await backend.copy_file_to_device(path, handle, file_offset=len(data) + 1)
    with pytest.raises(OutOfBoundsError, match="allocation"):
        await backend.copy_file_to_device(path, handle, 1)
    assert await backend.copy_from_device(handle, 0, len(data)) == bytes(len(data))


async def test_unreadable_sources(backend: HostBackend, tmp_path: Path) -> None:
    handle = await backend.allocate("host:0", 16)
    with pytest.raises(FileReadError, match="cannot open"):
        await backend.copy_file_to_device(tmp_path / "missing", handle)
    with pytest.raises(FileReadError, match="not a regular file"):
        await backend.copy_file_to_device(tmp_path, handle)
    with pytest.raises(TypeError):
        await backend.copy_file_to_device(b"not a path", handle)
    with pytest.raises(ValueError):
        await backend.copy_file_to_device(tmp_path / "x", handle, file_offset=-1)


async def test_a_file_that_shrinks_mid_copy_is_a_read_error(
    backend: HostBackend, data_file: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = data_file
    handle = await backend.allocate("host:0", len(data))
    real = file_copy.read_exact

    def shrink_then_read(fd: int, view: memoryview, position: int) -> None:
        os.truncate(path, 4096)
        real(fd, view, position)

    monkeypatch.setattr(file_copy, "read_exact", shrink_then_read)
    with pytest.raises(FileReadError, match=r"short|ended"):
        await backend.copy_file_to_device(path, handle)


async def test_cancelled_copy_leaves_no_reader_running(
    backend: HostBackend, data_file: tuple[Path, bytes]
) -> None:
    path, data = data_file
    handle = await backend.allocate("host:0", len(data))
    task = asyncio.ensure_future(backend.copy_file_to_device(path, handle))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await backend.deallocate(handle)
