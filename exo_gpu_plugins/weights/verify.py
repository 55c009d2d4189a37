"""Checking a load: every tensor read back from the device and compared with its bytes in the file.

For `exo-gpu load --verify`, the benchmark and tests; it reads through one reused buffer pair, so
memory stays bounded whatever the checkpoint's size.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from exo_gpu_plugins.errors import FileReadError
from exo_gpu_plugins.file_copy import open_regular_file, read_exact

if TYPE_CHECKING:
    from exo_gpu_plugins.backend import GPUBackend
    from exo_gpu_plugins.weights.tensors import LoadedTensor

__all__ = ["mismatched_tensors"]

_CHUNK = 64 << 20


async def mismatched_tensors(backend: GPUBackend[Any], tensors: Mapping[str, LoadedTensor]) -> list[str]:
    """The names of the tensors whose bytes on the device differ from the file (empty: all exact)."""
    chunk = min(_CHUNK, max((t.size_bytes for t in tensors.values()), default=0))
    device_buffer = memoryview(bytearray(chunk))
    file_buffer = memoryview(bytearray(chunk))
    descriptors: dict[str, int] = {}
    wrong: list[str] = []
    try:
        for name, tensor in tensors.items():
            if tensor.handle is None:
                continue
            fd = descriptors.get(tensor.file)
            if fd is None:
                fd, _ = open_regular_file(tensor.file, FileReadError)
                descriptors[tensor.file] = fd
            done = 0
            while done < tensor.size_bytes:
                size = min(chunk, tensor.size_bytes - done)
                on_device, in_file = device_buffer[:size], file_buffer[:size]
                await backend.copy_from_device_into(tensor.handle, tensor.offset_bytes + done, on_device)
                try:
                    read_exact(fd, in_file, tensor.file_offset + done)
                except FileReadError as exc:
                    raise FileReadError(f"{tensor.file}: {exc}") from exc
                if on_device != in_file:
                    wrong.append(name)
                    break
                done += size
    finally:
        for fd in descriptors.values():
            os.close(fd)
    return wrong
