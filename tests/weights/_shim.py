"""TEMPORARY until the core's copy_file_to_device lands on main: delete after rebasing."""

from __future__ import annotations

import os
from typing import Any

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import OutOfBoundsError


async def _copy_file_to_device(
    self: GPUBackend[Any],
    src: Any,
    dst_handle: Any,
    offset_bytes: int = 0,
    *,
    file_offset: int = 0,
    size_bytes: int | None = None,
) -> int:
    fd = src if isinstance(src, int) else src.fileno()
    size = os.fstat(fd).st_size - file_offset if size_bytes is None else size_bytes
    if file_offset + size > os.fstat(fd).st_size:
        raise OutOfBoundsError("file range")
    buffer = bytearray(min(size, 4 << 20))
    done = 0
    while done < size:
        n = min(len(buffer), size - done)
        got = os.preadv(fd, [memoryview(buffer)[:n]], file_offset + done)
        await self.copy_to_device(memoryview(buffer)[:got], dst_handle, offset_bytes + done)
        done += got
    return size


if not hasattr(GPUBackend, "copy_file_to_device"):
    GPUBackend.copy_file_to_device = _copy_file_to_device  # type: ignore[attr-defined]
