"""The engine's file-copy paths that the automatic plan takes only on discrete GPUs: reads into
the upload ring's staging slots, buffered (`file_direct=0`) and with `O_DIRECT` (`file_direct=1`;
by default only for cold files). Each runs in a fresh process, because the tunables are read once
per process, with the discrete plan forced on lavapipe; every byte is compared, at offsets that
are not block-aligned, and a file that shrinks under the copy fails with FileReadError."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Run by a fresh interpreter (subprocess), so asyncio.run: that process's one event loop.
SCRIPT = r"""
import asyncio, os, sys
from exo_gpu_vulkan.backend import VulkanBackend
from exo_gpu_plugins.errors import FileReadError

path = sys.argv[1]
data = open(path, "rb").read()

async def main():
    b = VulkanBackend(); await b.initialize()
    d = b.list_devices()[0].device_id
    size = len(data) - 4097 - 5
    h = await b.allocate(d, size + 3)
    assert await b.copy_file_to_device(path, h, 3, file_offset=4097, size_bytes=size) == size
    assert await b.copy_from_device(h, 3, size) == data[4097:4097 + size]
    # A file that shrinks after the core checked its size: the engine's own read fails.
    with open(path, "r+b") as f:
        f.truncate(len(data) // 2)
        alloc_id = int(b._entry(h, "h").native[0])
        try:
            b._engine.write_from_file(alloc_id, 3, f.fileno(), 4097, size)
        except FileReadError:
            print("short-read-refused")
        except Exception as exc:
            print("wrong error", type(exc).__name__, exc)
    stats = b.engine_stats(d)
    print("direct", stats["direct_read_bytes"], "staged", stats["staged_bytes"])
    await b.shutdown()

asyncio.run(main())
"""

MiB = 1 << 20


@pytest.mark.parametrize(
    ("tune", "direct"),
    [
        ("plan=discrete,map_write=64k,slot=1m,file_direct=1", True),
        ("plan=discrete,map_write=64k,slot=1m,file_direct=0", False),
    ],
    ids=["direct", "buffered"],
)
def test_file_copy_path_is_byte_exact(tune: str, direct: bool, tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(9 * MiB + 123))
    if direct:
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
        except OSError:
            pytest.skip(f"the file system of {tmp_path} refuses O_DIRECT")
    # The discrete plan is the automatic strategy's: a strategy forced for the suite would skip it.
    env = dict(os.environ, EXO_VULKAN_TUNE=tune, EXO_VULKAN_TRANSFER="auto")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert "short-read-refused" in lines, done.stdout
    size = 9 * MiB + 123 - 4097 - 5
    # Staged: the file copy, then the read back.
    expected = ["direct", str(size if direct else 0), "staged", str(2 * size)]
    assert lines[1].split() == expected, done.stdout


async def test_the_engine_reads_a_file_into_caller_memory(tmp_path: Path) -> None:
    # `_read_file_into`, the CUDA copy path's reader: the engine's parallel preads, exact at odd
    # offsets, refusing a file that ends early, a read-only buffer and a bad descriptor.
    from exo_gpu_vulkan.backend import VulkanBackend

    from exo_gpu_plugins.errors import FileReadError

    data = os.urandom((24 << 20) + 4099)
    path = tmp_path / "bytes"
    path.write_bytes(data)
    backend = VulkanBackend()
    await backend.initialize()
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset, size in ((0, len(data)), (4097, 16 << 20), (len(data) - 5, 5), (12_345, 0)):
            out = bytearray(size + 2)
            backend._read_file_into(fd, offset, memoryview(out)[1 : size + 1])
            assert out[1 : size + 1] == data[offset : offset + size], (offset, size)
            assert out[0] == 0 and out[-1] == 0, "bytes outside the view were written"
        with pytest.raises(FileReadError, match="short read"):
            backend._read_file_into(fd, len(data) - 10, memoryview(bytearray(20)))
        with pytest.raises((TypeError, ValueError, BufferError)):
            backend._read_file_into(fd, 0, memoryview(bytes(16)))
        with pytest.raises(ValueError, match="file descriptor"):
            backend._read_file_into(-1, 0, memoryview(bytearray(16)))
        unused = os.open(path, os.O_RDONLY)
        os.close(unused)  # a descriptor that is not open
        with pytest.raises(FileReadError, match="Bad file descriptor"):
            backend._read_file_into(unused, 0, memoryview(bytearray(16)))
    finally:
        os.close(fd)
        await backend.shutdown()
