"""Files into device memory: opening what the caller passed, reading exactly, and the default
pipeline that every backend gets for `copy_file_to_device`.

The default reads fixed-size chunks with `os.preadv` in worker threads (the GIL is released while
the kernel copies from the page cache), several chunks at once, and hands each to the backend's
`_write` in order, so reading chunk k+1 overlaps writing chunk k. Memory stays bounded: a few
chunks, reused. Backends with a faster path (reading straight into staging or mapped memory)
override `_write_from_file`.

`open_regular_file` is the one way the package opens a path it reads (checkpoints, shards, indexes,
`copy_file_to_device` sources, exo's config file): a FIFO, socket, device or folder is refused at
once, never waited on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import stat
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from exo_gpu_plugins.errors import FileReadError, GPUError

__all__ = [
    "CHUNK_BYTES",
    "file_kind",
    "open_regular_file",
    "open_source",
    "parallel_read_into",
    "pipelined_copy",
    "read_exact",
]

# Large enough that a syscall and a thread hop per chunk cost nothing; small enough that a few
# in flight keep memory bounded (READERS + 1 chunks).
CHUNK_BYTES = 16 << 20
READERS = 4
# Reads straight into the destination (`parallel_read_into`) hold no buffer, so their chunks can
# be larger: a quarter of the thread hops (on the 2-core CI machine a 1 GiB load into the host
# backend went from 0.74-0.91x numpy's single `preadv` to 0.92-1.08x).
DIRECT_CHUNK_BYTES = 64 << 20


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def file_kind(mode: int) -> str:
    """What a `st_mode` is, in words ("a regular file", "a FIFO (named pipe)", ...)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((kind for test, kind in _KINDS if test(mode)), f"a special file (mode {mode:o})")


def _refuse_special(label: str, info: os.stat_result, error: type[GPUError]) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{label}: not a regular file: it is {file_kind(info.st_mode)}")


def open_regular_file(path: str | os.PathLike[str], error: type[GPUError]) -> tuple[int, os.stat_result]:
    """Open `path` read-only and return (descriptor, its `fstat`), or raise `error` naming the path.

    Never blocks: anything but a regular file (a FIFO, whose `open` would wait for a writer, a
    socket, a character or block device, a folder) is refused by a `stat` before the open, and the
    open itself is non-blocking (and cannot take a terminal), in case the path was swapped
    meanwhile; the descriptor is blocking again when returned. A path that cannot be resolved
    says why (`ENOENT`, `ELOOP` for a symbolic link loop, `EACCES`, ...)."""
    label = os.fsdecode(os.fspath(path))
    try:
        _refuse_special(label, os.stat(path), error)
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
        fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise error(f"{label}: cannot open: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a NUL byte, or a name the file system encoding cannot hold
        raise error(f"{label!r}: cannot open: {exc}") from exc
    try:
        info = os.fstat(fd)
        _refuse_special(label, info, error)
        os.set_blocking(fd, True)
    except OSError as exc:
        os.close(fd)
        raise error(f"{label}: cannot read: {exc.strerror or exc}") from exc
    except BaseException:
        os.close(fd)
        raise
    return fd, info


@contextlib.contextmanager
def open_source(src: object) -> Iterator[tuple[int, int, str]]:
    """(descriptor, file size, label for messages) of a path, an open file or a descriptor.

    A path is opened read-only and closed afterwards; a descriptor or file object stays the
    caller's (its position is not moved: reads use `pread`)."""
    owned = False
    if isinstance(src, (str, os.PathLike)):
        label = os.fsdecode(os.fspath(src))
        fd, _ = open_regular_file(src, FileReadError)
        owned = True
    elif isinstance(src, int) and not isinstance(src, bool):
        fd, label = src, _descriptor_label(src)
    elif callable(getattr(src, "fileno", None)):
        try:
            fd = int(src.fileno())  # type: ignore[attr-defined]
        except (OSError, ValueError) as exc:
            raise FileReadError(f"{type(src).__name__} has no usable file descriptor: {exc}") from exc
        name = getattr(src, "name", None)
        label = os.fsdecode(name) if isinstance(name, (str, bytes)) else _descriptor_label(fd)
    else:
        raise TypeError(
            f"src must be a path, an open file or a file descriptor, not {type(src).__name__}"
        )
    try:
        try:
            info = os.fstat(fd)
        except OSError as exc:
            raise FileReadError(f"{label}: cannot read: {exc.strerror or exc}") from exc
        _refuse_special(label, info, FileReadError)
        yield fd, info.st_size, label
    finally:
        if owned:
            os.close(fd)


def _descriptor_label(fd: int) -> str:
    """A descriptor named by its path where the system says (Linux's /proc/self/fd), as in
    "file descriptor 7 (/models/a.safetensors)"."""
    try:
        return f"file descriptor {fd} ({os.readlink(f'/proc/self/fd/{fd}')})"
    except OSError:
        return f"file descriptor {fd}"


def name_file(exc: FileReadError, label: str, start: int, size: int, file_size: int) -> None:
    """Put the file and the range asked for at the front of a backend's `FileReadError` (the
    engines know only a descriptor): every such error then names its file, says what was expected
    and, in the backend's own words, what was found. Changes `exc` in place (type and traceback
    kept), once."""
    if exc.args and isinstance(exc.args[0], str) and exc.args[0].startswith(f"{label}: "):
        return
    exc.args = (
        f"{label}: reading bytes [{start}, {start + size}) of what was a {file_size}-byte file: {exc}",
        *exc.args[1:],
    )


def read_exact(fd: int, view: memoryview, position: int) -> None:
    """Fill `view` from `position` of the file, or raise `FileReadError` (I/O error, or the file
    ended early: it shrank after its size was checked)."""
    done = 0
    total = view.nbytes
    while done < total:
        try:
            got = os.preadv(fd, [view[done:]], position + done)
        except OSError as exc:
            raise FileReadError(
                f"reading {total} bytes at file offset {position} failed after {done}: "
                f"{exc.strerror or exc}"
            ) from exc
        if got == 0:
            raise FileReadError(
                f"expected {total} bytes from offset {position}, but the file ended at offset "
                f"{position + done}, {total - done} bytes short (did it shrink during the copy?)"
            )
        done += got


async def parallel_read_into(fd: int, view: memoryview, position: int) -> None:
    """Fill `view` from the file with up to `READERS` chunk reads in flight at once (for memory the
    process can write directly, e.g. the host backend's)."""
    loop = asyncio.get_running_loop()
    chunk, readers = DIRECT_CHUNK_BYTES, READERS
    pending: collections.deque[asyncio.Future[None]] = collections.deque()
    try:
        for start in range(0, view.nbytes, chunk):
            if len(pending) >= readers:
                await pending.popleft()
            part = view[start : start + chunk]
            pending.append(loop.run_in_executor(None, read_exact, fd, part, position + start))
        while pending:
            await pending.popleft()
    finally:
        await _settle(pending)


Write = Callable[[int, memoryview], Awaitable[None]]


async def pipelined_copy(write: Write, offset: int, fd: int, file_offset: int, size: int) -> None:
    """The default `_write_from_file`: chunk reads in worker threads, written in order by `write`
    (the backend's `_write` of one allocation), reads of later chunks overlapping the current write."""
    loop = asyncio.get_running_loop()
    chunk = min(CHUNK_BYTES, size)
    depth = min(READERS + 1, -(-size // chunk))
    buffers = [memoryview(bytearray(chunk)) for _ in range(depth)]
    pending: collections.deque[tuple[asyncio.Future[None], memoryview, int]] = collections.deque()

    async def write_oldest() -> None:
        read, part, at = pending.popleft()
        await read
        await write(offset + at, part)

    try:
        for number, start in enumerate(range(0, size, chunk)):
            if len(pending) >= depth:
                await write_oldest()
            part = buffers[number % depth][: min(chunk, size - start)]
            read = loop.run_in_executor(None, read_exact, fd, part, file_offset + start)
            pending.append((read, part, start))
        while pending:
            await write_oldest()
    finally:
        await _settle(read for read, _, _ in pending)


async def _settle(futures: Any) -> None:
    """Wait for reads still running after a failure or cancellation, so that no thread writes into
    a buffer after the copy returned; their own errors are secondary to the first one."""
    for future in list(futures):
        with contextlib.suppress(BaseException):
            await asyncio.shield(future)
