"""Memory shared between processes: `SharedMemory` (a file descriptor of an allocation's memory
and what a receiver must know to open it) and its passage over a Unix socket (`SCM_RIGHTS`).

The sender: `shared = await backend.export_memory(handle)`, `send_shared(sock, shared)`,
`shared.close()`. The receiver: `shared = receive_shared(sock)`,
`handle = await backend.import_memory(device_id, shared)`, `shared.close()`. Either side's
memory lives until its own handle is freed and its exports are gone; the kernel keeps the pages
while any process holds them.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
from dataclasses import dataclass, field
from typing import Any, Literal

from exo_gpu_plugins.errors import InteropError
from exo_gpu_plugins.quoting import quoted

__all__ = ["HandleType", "SharedMemory", "receive_shared", "send_shared"]

HandleType = Literal["opaque-fd", "memfd"]
_HANDLE_TYPES: tuple[str, ...] = ("opaque-fd", "memfd")

# Frame: magic, then the JSON description's length, then the description; the descriptor rides
# on the first byte (SCM_RIGHTS).
_MAGIC = b"EXOSHM1\0"
_LENGTH = struct.Struct("!I")
_MAX_DESCRIPTION = 64 * 1024
_FD_END = 1 << 31  # descriptors are C ints


@dataclass(eq=False)
class SharedMemory:
    """An allocation's memory as a file descriptor this object owns (closed by `close()`, by
    `with`, or when it is garbage), with what the receiving side checks before it opens it.

    `size_bytes` is the allocation's size; `allocation_bytes` the memory object's (at least as
    large); `device_uuid`/`driver_uuid` (hex) name the device it belongs to, where the backend
    has such identities; `memory_type`/`memory_flags` are the backend's memory type."""

    fd: int
    backend: str
    handle_type: HandleType
    size_bytes: int
    allocation_bytes: int
    device_uuid: str | None = None
    driver_uuid: str | None = None
    memory_type: int | None = None
    memory_flags: int | None = None
    _closed: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        try:
            if type(self.fd) is not int:
                raise TypeError(f"fd must be an int (a file descriptor), not {type(self.fd).__name__}")
            if not 0 <= self.fd < _FD_END:
                raise InteropError(f"fd must be an open file descriptor (from 0), not {self.fd}")
            _check_description(self.description())
        except (InteropError, TypeError):
            self._closed = True  # refused: the descriptor stays the caller's
            raise

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the descriptor (idempotent). Memory imported from it stays with the importer."""
        if not self._closed:
            self._closed = True
            os.close(self.fd)

    def __enter__(self) -> SharedMemory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()

    def __reduce__(self) -> Any:
        raise TypeError("a SharedMemory owns a descriptor: send it with send_shared, not pickle")

    def __copy__(self) -> Any:
        raise TypeError("a SharedMemory owns a descriptor: it cannot be copied")

    def __deepcopy__(self, memo: object) -> Any:
        raise TypeError("a SharedMemory owns a descriptor: it cannot be copied")

    def description(self) -> dict[str, Any]:
        """Everything but the descriptor, as JSON-able values (what travels beside it)."""
        return {
            "backend": self.backend,
            "handle_type": self.handle_type,
            "size_bytes": self.size_bytes,
            "allocation_bytes": self.allocation_bytes,
            "device_uuid": self.device_uuid,
            "driver_uuid": self.driver_uuid,
            "memory_type": self.memory_type,
            "memory_flags": self.memory_flags,
        }

    def check_descriptor(self) -> None:
        """Refuse a descriptor that cannot be this memory: closed, not a descriptor at all, a
        pipe, socket, directory or block device, or a file smaller than the memory it claims."""
        if self._closed:
            raise InteropError("this SharedMemory was closed; its descriptor is gone")
        try:
            info = os.fstat(self.fd)
        except OSError as exc:
            raise InteropError(f"descriptor {self.fd} is not open: {exc.strerror}") from None
        mode = info.st_mode
        for test, kind in (
            (stat.S_ISFIFO, "a pipe"),
            (stat.S_ISSOCK, "a socket"),
            (stat.S_ISDIR, "a directory"),
            (stat.S_ISBLK, "a block device"),
        ):
            if test(mode):
                raise InteropError(f"descriptor {self.fd} is {kind}, not shared device memory")
        if stat.S_ISREG(mode) and info.st_size < self.allocation_bytes:
            raise InteropError(
                f"descriptor {self.fd} holds {info.st_size} bytes but the shared memory claims "
                f"{self.allocation_bytes}: wrong size"
            )


def _check_description(description: dict[str, Any]) -> None:
    """Refuse a malformed description, naming the field."""

    def integer(name: str, minimum: int, optional: bool = False) -> None:
        value = description.get(name)
        if value is None and optional:
            return
        if type(value) is not int or value < minimum:
            raise InteropError(
                f"shared memory field {name!r} must be an int >= {minimum}, not {quoted(value)}"
            )

    def text(name: str, optional: bool = False) -> None:
        value = description.get(name)
        if (value is None and optional) or isinstance(value, str):
            return
        raise InteropError(f"shared memory field {name!r} must be a string, not {quoted(value)}")

    text("backend")
    if description.get("handle_type") not in _HANDLE_TYPES:
        raise InteropError(
            f"shared memory handle_type must be one of {', '.join(_HANDLE_TYPES)}, "
            f"not {quoted(description.get('handle_type'))}"
        )
    integer("size_bytes", 1)
    integer("allocation_bytes", 1)
    if description["allocation_bytes"] < description["size_bytes"]:
        raise InteropError(
            f"shared memory of {description['allocation_bytes']} bytes cannot hold an allocation "
            f"of {description['size_bytes']}"
        )
    for name in ("device_uuid", "driver_uuid"):
        text(name, optional=True)
        value = description.get(name)
        if value is not None and not _is_uuid_hex(value):
            raise InteropError(
                f"shared memory field {name!r} must be 32 hex digits, not {quoted(value)}"
            )
    integer("memory_type", 0, optional=True)
    integer("memory_flags", 0, optional=True)
    for name in ("memory_type", "memory_flags"):
        if (description.get(name) or 0) >= 1 << 32:
            raise InteropError(f"shared memory field {name!r} must fit 32 bits, not {description[name]}")
    if description["allocation_bytes"] >= 1 << 64:
        raise InteropError("shared memory field 'allocation_bytes' must fit 64 bits")


def _is_uuid_hex(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdefABCDEF" for c in value)


def send_shared(sock: socket.socket, shared: SharedMemory) -> None:
    """Send the descriptor (SCM_RIGHTS) and its description over a connected Unix stream socket,
    blocking until sent (from async code: `await asyncio.to_thread(send_shared, sock, shared)`).
    The caller still owns `shared` (close it once sent)."""
    _check_socket(sock)
    if not isinstance(shared, SharedMemory):
        raise TypeError(f"shared must be a SharedMemory, not {type(shared).__name__}")
    if shared.closed:
        raise InteropError("this SharedMemory was closed; there is no descriptor to send")
    body = json.dumps(shared.description()).encode()
    frame = _MAGIC + _LENGTH.pack(len(body)) + body
    sent = socket.send_fds(sock, [frame[:1]], [shared.fd])
    if sent != 1:
        raise InteropError("the socket took no byte of the shared-memory message")
    sock.sendall(frame[1:])


def receive_shared(sock: socket.socket) -> SharedMemory:
    """Receive one `SharedMemory` sent by `send_shared`, blocking until it arrives or the
    socket's timeout passes (from async code: `await asyncio.to_thread(receive_shared, sock)`).
    A message without a descriptor, or with a malformed description, is an `InteropError`; any
    descriptor that came with it is closed."""
    _check_socket(sock)
    first, fds, _flags, _address = socket.recv_fds(sock, 1, 4, getattr(socket, "MSG_CMSG_CLOEXEC", 0))
    try:
        if not first:
            raise InteropError("the socket closed before a shared-memory message arrived")
        if len(fds) != 1:
            raise InteropError(f"a shared-memory message carries one descriptor, this one {len(fds)}")
        head = first + _receive_exactly(sock, len(_MAGIC) - 1 + _LENGTH.size)
        if head[: len(_MAGIC)] != _MAGIC:
            raise InteropError("the message is not a shared-memory message of exo-gpu-plugins")
        (length,) = _LENGTH.unpack(head[len(_MAGIC) :])
        if length > _MAX_DESCRIPTION:
            raise InteropError(f"a shared-memory description of {length} bytes is too long")
        try:
            description = json.loads(_receive_exactly(sock, length))
        except (ValueError, RecursionError) as exc:  # not UTF-8 or JSON, or past int's digit limit
            raise InteropError(f"the shared-memory description is not JSON: {exc}") from None
        if not isinstance(description, dict) or set(description) != set(_FIELDS):
            raise InteropError(
                f"the shared-memory description must have exactly the fields {', '.join(_FIELDS)}"
            )
        _check_description(description)
        shared = SharedMemory(fd=fds[0], **description)
        fds.clear()
        return shared
    finally:
        for fd in fds:
            os.close(fd)


_FIELDS = (
    "backend",
    "handle_type",
    "size_bytes",
    "allocation_bytes",
    "device_uuid",
    "driver_uuid",
    "memory_type",
    "memory_flags",
)


def _check_socket(sock: object) -> None:
    """A Unix stream socket: the message travels in parts, which datagrams would cut short."""
    if not isinstance(sock, socket.socket):
        raise TypeError(f"sock must be a connected Unix socket, not {type(sock).__name__}")
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise InteropError(
            f"shared memory travels over a Unix stream socket (AF_UNIX, SOCK_STREAM), not "
            f"{sock.family.name}/{sock.type.name}"
        )
    if sock.gettimeout() == 0.0:
        raise InteropError(
            "send_shared and receive_shared block until the message has passed, so they need a "
            "blocking socket (or one with a timeout), not a non-blocking one: from async code, "
            "call them through asyncio.to_thread"
        )


def _receive_exactly(sock: socket.socket, count: int) -> bytes:
    parts: list[bytes] = []
    while count:
        part = sock.recv(count)
        if not part:
            raise InteropError("the socket closed in the middle of a shared-memory message")
        parts.append(part)
        count -= len(part)
    return b"".join(parts)
