"""`exo-gpu roundtrip`: allocate, copy random bytes up and back, and verify them, with a progress
bar (bytes, rate, time left) on a terminal."""

from __future__ import annotations

import argparse
import os
import time
from typing import TYPE_CHECKING

from exo_gpu_plugins.cli import size_argument
from exo_gpu_plugins.cli.target import first_device, open_target, resolve
from exo_gpu_plugins.sizes import format_bytes

if TYPE_CHECKING:
    from exo_gpu_plugins.cli import AddCommand
    from exo_gpu_plugins.cli.render import Screen

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
        start = time.perf_counter()
        handle = await backend.allocate(device, size)  # first: a refused size costs no host memory
        allocated = time.perf_counter()
        payload = memoryview(os.urandom(size))
        echoed = bytearray(size)
        back = memoryview(echoed)
        with screen.progress(2 * size, f"round trip on {device}") as advance:
            started = time.perf_counter()
            for offset in range(0, size, CHUNK_BYTES):
                piece = payload[offset : offset + CHUNK_BYTES]
                await backend.copy_to_device(piece, handle, offset)
                advance(len(piece))
            uploaded = time.perf_counter()
            for offset in range(0, size, CHUNK_BYTES):
                piece = back[offset : offset + CHUNK_BYTES]
                await backend.copy_from_device_into(handle, offset, piece)
                advance(len(piece))
            downloaded = time.perf_counter()
        await backend.deallocate(handle)
    finally:
        await backend.shutdown()
    exact = echoed == payload
    up_seconds = (allocated - start) + (uploaded - started)
    result = {
        "backend": backend.name,
        "device_id": device,
        "size_bytes": size,
        "exact": exact,
        "upload_seconds": up_seconds,
        "download_seconds": downloaded - uploaded,
    }
    if args.json:
        screen.json(result)
    else:
        screen.line(
            f"round trip on {device}: {format_bytes(size)} up in {up_seconds * 1e3:.2f} ms "
            f"(allocation included), down in {(downloaded - uploaded) * 1e3:.2f} ms; "
            f"{'bytes identical' if exact else 'BYTES DIFFER'}"
        )
    return 0 if exact else 1
