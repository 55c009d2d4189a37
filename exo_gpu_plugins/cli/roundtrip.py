"""`exo-gpu roundtrip`: allocate, copy random bytes up and back, and verify them, with a progress
bar (bytes, rate, time left) on a terminal from the first byte.

It streams: the bytes sent are a random block of up to 64 MiB, rotated by a random amount for each
64 MiB piece of the allocation, and each piece read back is compared in place, so the command holds
the block and one piece besides the allocation, whatever the size."""

from __future__ import annotations

import argparse
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from exo_gpu_plugins.cli.options import size_argument
from exo_gpu_plugins.cli.target import first_device, open_target, resolve
from exo_gpu_plugins.sizes import format_bytes

if TYPE_CHECKING:
    from exo_gpu_plugins.backend import GPUBackend
    from exo_gpu_plugins.cli.options import AddCommand
    from exo_gpu_plugins.cli.render import Screen
    from exo_gpu_plugins.models import MemoryHandle

__all__ = ["CHUNK_BYTES", "cmd_roundtrip", "register"]

# Copies go in pieces of this size so the bar moves; one piece costs far less than it carries.
CHUNK_BYTES = 64 << 20


def register(add: AddCommand) -> None:
    sub = add(
        "roundtrip",
        "allocate on the default (or given) backend, copy random bytes up and back, and verify them",
        cmd_roundtrip,
    )
    sub.add_argument(
        "--backend", help="backend name (default: the backend of --device, else as exo selects)"
    )
    sub.add_argument("--device", help="device id, e.g. host:0 (default: the backend's first device)")
    sub.add_argument(
        "--size", type=size_argument, default=16 << 20, help="bytes, e.g. 64M (default 16M)"
    )


async def cmd_roundtrip(args: argparse.Namespace, screen: Screen) -> int:
    target = resolve(args.backend, args.device)
    backend = await open_target(target)
    size: int = args.size
    try:
        device = first_device(backend, target)
        with screen.progress(2 * size, f"round trip on {device}") as advance:
            start = time.perf_counter()
            handle = await backend.allocate(device, size)  # first: a refused size costs no memory
            up_seconds = time.perf_counter() - start
            pieces = _pieces(size)
            up_seconds += await _upload(backend, handle, pieces, advance)
            down_seconds, exact = await _download_and_compare(backend, handle, pieces, advance)
        await backend.deallocate(handle)
    finally:
        await backend.shutdown()
    result = {
        "backend": backend.name,
        "device_id": device,
        "size_bytes": size,
        "exact": exact,
        "upload_seconds": up_seconds,
        "download_seconds": down_seconds,
    }
    if args.json:
        screen.json(result)
    else:
        screen.line(
            f"round trip on {device}: {format_bytes(size)} up in {up_seconds * 1e3:.2f} ms "
            f"(allocation included), down in {down_seconds * 1e3:.2f} ms; "
            f"{'bytes identical' if exact else 'BYTES DIFFER'}"
        )
    return 0 if exact else 1


@dataclass(frozen=True)
class _Pieces:
    """What goes up, without holding it: one random block of up to CHUNK_BYTES, and for each piece
    of the allocation a random rotation of it, so that no two pieces are alike and a piece written
    to the wrong place reads back wrong. Memory: the block, plus one piece's buffer for reading back.
    """

    block: memoryview
    size: int
    rotations: tuple[int, ...]

    def each(self) -> Iterator[tuple[int, int, int]]:
        """(offset in the allocation, piece length, rotation) for each piece."""
        for index, offset in enumerate(range(0, self.size, CHUNK_BYTES)):
            yield offset, min(CHUNK_BYTES, self.size - offset), self.rotations[index]


def _pieces(size: int) -> _Pieces:
    block = memoryview(os.urandom(min(size, CHUNK_BYTES)))
    count = -(-size // CHUNK_BYTES)
    rotations = tuple(secrets.randbelow(min(CHUNK_BYTES, size - i * CHUNK_BYTES)) for i in range(count))
    return _Pieces(block, size, rotations)


async def _upload(
    backend: GPUBackend[Any], handle: MemoryHandle, pieces: _Pieces, advance: Callable[[int], None]
) -> float:
    """Write every piece (its rotation as two copies); the seconds the copies took."""
    seconds = 0.0
    for offset, length, turn in pieces.each():
        start = time.perf_counter()
        await backend.copy_to_device(pieces.block[turn:length], handle, offset)
        if turn:
            await backend.copy_to_device(pieces.block[:turn], handle, offset + length - turn)
        seconds += time.perf_counter() - start
        advance(length)
    return seconds


async def _download_and_compare(
    backend: GPUBackend[Any], handle: MemoryHandle, pieces: _Pieces, advance: Callable[[int], None]
) -> tuple[float, bool]:
    """Read every piece back into one reused buffer and compare it with what was written; the
    seconds the copies took, and whether every byte matched."""
    seconds = 0.0
    exact = True
    buffer = bytearray(min(pieces.size, CHUNK_BYTES))
    for offset, length, turn in pieces.each():
        back = buffer if length == len(buffer) else bytearray(length)
        start = time.perf_counter()
        await backend.copy_from_device_into(handle, offset, back)
        seconds += time.perf_counter() - start
        # startswith/endswith compare in place (memcmp), with no copy of either side.
        same = back.startswith(pieces.block[turn:length]) and back.endswith(pieces.block[:turn])
        exact = exact and same
        advance(length)
    return seconds, exact
