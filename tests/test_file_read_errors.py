"""Every `FileReadError` names its file, the range that was asked for, and what was found, on
every backend: the engines see only a descriptor, so the core puts the name in front of whatever
the backend says ("the file ended at offset N" from the host backend's reads, "short read: the file
ends before byte N" from the Vulkan engine's). The file is cut short after `copy_file_to_device`
checked its size and before the backend reads it: a file that shrank during the copy."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import FileReadError
from exo_gpu_plugins.weights import load_weights
from exo_gpu_plugins.weights.synthetic import write_safetensors

SIZE = 1 << 20
KEPT = 1000


def cut_short_before_reading(
    target: GPUBackend[Any], path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Truncate `path` to KEPT bytes just before the backend's file copy starts."""
    real = target._write_from_file

    async def shrink_then_copy(native: Any, offset: int, fd: int, file_offset: int, size: int) -> None:
        os.truncate(path, KEPT)
        await real(native, offset, fd, file_offset, size)

    monkeypatch.setattr(target, "_write_from_file", shrink_then_copy)


def found(message: str) -> bool:
    """The backend's own account of what it found: the file ending early."""
    return f"ended at offset {KEPT}" in message or "short read" in message


@pytest.mark.parametrize("source", ["path", "str", "file object", "descriptor"])
async def test_short_read_names_the_file(
    source: str,
    backend: GPUBackend[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * (SIZE // 256))
    handle = await backend.allocate(backend.list_devices()[0].device_id, SIZE)
    cut_short_before_reading(backend, path, monkeypatch)
    with open(path, "rb") as opened:
        src: object = {
            "path": path,
            "str": str(path),
            "file object": opened,
            "descriptor": opened.fileno(),
        }[source]
        with pytest.raises(FileReadError) as caught:
            await backend.copy_file_to_device(src, handle)
    message = str(caught.value)
    assert str(path) in message, message  # a descriptor is named by its path too (Linux)
    assert f"reading bytes [0, {SIZE}) of what was a {SIZE}-byte file" in message, message
    assert found(message), message
    await backend.deallocate(handle)


async def test_load_names_the_shard(
    backend: GPUBackend[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "model.safetensors"
    write_safetensors(path, [("model.layers.0.mlp.weight", "U8", (SIZE,))])
    cut_short_before_reading(backend, path, monkeypatch)
    device = backend.list_devices()[0].device_id
    with pytest.raises(FileReadError) as caught:
        await load_weights(backend, device, path)
    message = str(caught.value)
    assert message.startswith(f"{path}: reading bytes ["), message
    assert found(message), message
    assert backend.live_handles() == []
