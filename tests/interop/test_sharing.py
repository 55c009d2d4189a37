"""Memory shared with a second process over a Unix socket (SCM_RIGHTS): byte-exact both ways,
each side's memory alive until its own handle and views are gone, and every descriptor of the
wrong kind, size or device refused with `InteropError` before anything is opened."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import InteropError, OutOfBoundsError
from exo_gpu_plugins.interop import SharedMemory, receive_shared, send_shared
from tests.interop.conftest import device_of

ROOT = Path(__file__).resolve().parents[2]

# The second process: receives the memory, checks what the first wrote, writes its own bytes,
# synchronizes, says so; then frees its handle and exits when told. A process of its own, so
# asyncio.run.
CHILD = textwrap.dedent(
    """
    import asyncio, json, socket, sys
    from exo_gpu_plugins.interop import receive_shared

    async def main():
        name, fd = sys.argv[1], int(sys.argv[2])
        sock = socket.socket(fileno=fd)
        if name == "vulkan":
            from exo_gpu_vulkan.backend import VulkanBackend as Backend
        else:
            from exo_gpu_plugins.host.backend import HostBackend as Backend
        backend = Backend()
        await backend.initialize()
        device = backend.list_devices()[0].device_id
        with receive_shared(sock) as shared:
            handle = await backend.import_memory(device, shared)
        seen = await backend.copy_from_device(handle, 0, 64)
        await backend.copy_to_device(bytes(range(100, 164)), handle, 64)
        await backend.synchronize(device)
        sock.sendall(json.dumps({"seen": seen.hex()}).encode() + b"\\n")
        assert sock.recv(1) == b"q"
        await backend.deallocate(handle)
        await backend.shutdown()

    asyncio.run(main())
    """
)


def _child(name: str, sock: socket.socket) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, name, str(sock.fileno())],
        pass_fds=[sock.fileno()],
        env=env,
    )


def _line(sock: socket.socket) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        part = sock.recv(4096)
        assert part, "the second process died before answering"
        data += part
    answer: dict[str, Any] = json.loads(data)
    return answer


async def test_a_second_process_reads_and_writes_the_same_memory(
    backend: GPUBackend[Any], backend_name: str
) -> None:
    device = device_of(backend)
    assert "fd" in backend.capabilities(device).export_kinds
    handle = await backend.allocate(device, 1 << 20, exportable=True)
    await backend.copy_to_device(bytes(range(64)), handle)
    ours, theirs = socket.socketpair()
    child = _child(backend_name, theirs)
    theirs.close()
    try:
        with await backend.export_memory(handle) as shared:
            send_shared(ours, shared)
        answer = _line(ours)
        assert bytes.fromhex(answer["seen"]) == bytes(range(64)), "the second process read other bytes"
        assert await backend.copy_from_device(handle, 64, 64) == bytes(range(100, 164))
        # Our side outlives the other's handle: free it there, then read here again.
        ours.sendall(b"q")
        assert child.wait(timeout=60) == 0
        assert await backend.copy_from_device(handle, 0, 64) == bytes(range(64))
    finally:
        ours.close()
        if child.poll() is None:
            child.kill()
            child.wait()


async def test_exported_memory_survives_the_exporters_free(backend: GPUBackend[Any]) -> None:
    device = device_of(backend)
    handle = await backend.allocate(device, 4096, exportable=True)
    await backend.copy_to_device(b"kept" * 16, handle)
    shared = await backend.export_memory(handle)
    await backend.deallocate(handle)
    try:
        again = await backend.import_memory(device, shared)
    finally:
        shared.close()
    assert await backend.copy_from_device(again, 0, 64) == b"kept" * 16


async def test_a_large_allocation_of_odd_size_is_shared_to_its_last_byte(
    backend: GPUBackend[Any],
) -> None:
    # Large exportable buffers are rounded up to whole 2 MiB pages: both sides must agree on it.
    device = device_of(backend)
    size = (64 << 20) + 4093
    handle = await backend.allocate(device, size, exportable=True)
    await backend.copy_to_device(b"tail" * 16, handle, size - 64)
    with await backend.export_memory(handle) as shared:
        assert shared.size_bytes == size
        again = await backend.import_memory(device, shared)
    assert await backend.copy_from_device(again, size - 64, 64) == b"tail" * 16
    await backend.copy_to_device(b"back" * 16, again, size - 64)
    await backend.synchronize(device)
    assert await backend.copy_from_device(handle, size - 64, 64) == b"back" * 16
    with pytest.raises(OutOfBoundsError):
        await backend.copy_from_device(again, size - 63, 64)
    await backend.deallocate(again)
    await backend.deallocate(handle)


async def test_only_exportable_allocations_are_shared(backend: GPUBackend[Any]) -> None:
    handle = await backend.allocate(device_of(backend), 4096)
    with pytest.raises(InteropError, match="exportable=True"):
        await backend.export_memory(handle)


async def _shared(backend: GPUBackend[Any], size: int = 8192) -> SharedMemory:
    handle = await backend.allocate(device_of(backend), size, exportable=True)
    return await backend.export_memory(handle)


async def test_wrong_size_is_refused(backend: GPUBackend[Any]) -> None:
    with await _shared(backend) as shared:
        too_big = dataclasses.replace(
            shared, fd=os.dup(shared.fd), allocation_bytes=1 << 30, size_bytes=1 << 30
        )
        with too_big, pytest.raises(InteropError, match="size"):
            await backend.import_memory(device_of(backend), too_big)


async def test_wrong_kind_of_descriptor_is_refused(backend: GPUBackend[Any]) -> None:
    with await _shared(backend) as shared:
        read_end, write_end = os.pipe()
        os.close(write_end)
        pipe = dataclasses.replace(shared, fd=read_end)
        with pipe, pytest.raises(InteropError, match="pipe"):
            await backend.import_memory(device_of(backend), pipe)
        left, right = socket.socketpair()
        right.close()
        sock = dataclasses.replace(shared, fd=left.detach())
        with sock, pytest.raises(InteropError, match="socket"):
            await backend.import_memory(device_of(backend), sock)
        other_kind = "memfd" if shared.handle_type == "opaque-fd" else "opaque-fd"
        kind = dataclasses.replace(shared, fd=os.dup(shared.fd), handle_type=other_kind)
        with kind, pytest.raises(InteropError, match=other_kind):
            await backend.import_memory(device_of(backend), kind)
        foreign = dataclasses.replace(shared, fd=os.dup(shared.fd), backend="metal")
        with foreign, pytest.raises(InteropError, match="metal"):
            await backend.import_memory(device_of(backend), foreign)


async def test_memory_of_another_device_is_refused() -> None:
    from tests.interop.conftest import make_backend

    backend = make_backend("vulkan")
    await backend.initialize()
    try:
        with await _shared(backend) as shared:
            elsewhere = dataclasses.replace(shared, fd=os.dup(shared.fd), device_uuid="ab" * 16)
            with elsewhere, pytest.raises(InteropError, match="UUID"):
                await backend.import_memory(device_of(backend), elsewhere)
            driver = dataclasses.replace(shared, fd=os.dup(shared.fd), driver_uuid="cd" * 16)
            with driver, pytest.raises(InteropError, match="driver UUID"):
                await backend.import_memory(device_of(backend), driver)
            bad_type = dataclasses.replace(shared, fd=os.dup(shared.fd), memory_type=999)
            with bad_type, pytest.raises(InteropError, match="memory type"):
                await backend.import_memory(device_of(backend), bad_type)
            # A dedicated import is the exporter's buffer exactly: a smaller claim is refused,
            # and the message names the size claimed beside the buffer's.
            small = dataclasses.replace(shared, fd=os.dup(shared.fd), size_bytes=1)
            with small, pytest.raises(InteropError, match="claimed as 1 bytes"):
                await backend.import_memory(device_of(backend), small)
    finally:
        await backend.shutdown()


def test_malformed_messages_are_refused_and_close_their_descriptors() -> None:
    before = len(os.listdir("/proc/self/fd"))
    for payload, with_fd, expected in (
        (b"E", False, "one descriptor"),
        (b"EXOSHM1\0" + b"\0\0\0\2{}", True, "fields"),
        (b"EXOSHM1\0" + b"\0\0\0\3{x}", True, "JSON"),
        (b"NOTOURS!" + b"\0\0\0\0", True, "not a shared-memory message"),
    ):
        left, right = socket.socketpair()
        with left, right:
            read_end, write_end = os.pipe()
            if with_fd:
                socket.send_fds(left, [payload[:1]], [read_end])
            else:
                left.sendall(payload[:1])
            left.sendall(payload[1:])
            os.close(read_end)
            os.close(write_end)
            with pytest.raises(InteropError, match=expected):
                receive_shared(right)
    assert len(os.listdir("/proc/self/fd")) == before


def test_descriptions_are_strict() -> None:
    read_end, write_end = os.pipe()
    os.close(write_end)
    try:
        for field, value in (("size_bytes", 0), ("size_bytes", "1"), ("handle_type", "dmabuf")):
            fields: dict[str, Any] = {
                "backend": "host",
                "handle_type": "memfd",
                "size_bytes": 16,
                "allocation_bytes": 16,
            }
            fields[field] = value
            with pytest.raises(InteropError, match=field):
                SharedMemory(fd=read_end, **fields)
    finally:
        os.close(read_end)


async def test_a_thousand_share_cycles_leak_no_descriptor(backend: GPUBackend[Any]) -> None:
    device = device_of(backend)

    async def cycle() -> None:
        handle = await backend.allocate(device, 64 * 1024, exportable=True)
        with await backend.export_memory(handle) as shared:
            opened = await backend.import_memory(device, shared)
        await backend.deallocate(handle)
        await backend.deallocate(opened)

    for _ in range(20):
        await cycle()
    fds = len(os.listdir("/proc/self/fd"))
    used = (await backend.get_device_memory_info(device)).used_bytes
    for _ in range(1000):
        await cycle()
    assert len(os.listdir("/proc/self/fd")) == fds, "share cycles leak file descriptors"
    after = (await backend.get_device_memory_info(device)).used_bytes
    assert after <= used + backend.capabilities(device).allocation_granularity_bytes, (
        f"share cycles leak memory: used {used} -> {after} bytes"
    )


async def test_shared_memory_cannot_be_pickled_or_copied(backend: GPUBackend[Any]) -> None:
    import copy
    import pickle

    with await _shared(backend) as shared:
        for attempt in (lambda: pickle.dumps(shared), lambda: copy.copy(shared)):
            with pytest.raises(TypeError, match="descriptor"):
                attempt()


async def test_host_refuses_an_unsealed_memfd() -> None:
    from tests.interop.conftest import make_backend

    backend = make_backend("host")
    await backend.initialize()
    try:
        fd = os.memfd_create("unsealed")
        os.ftruncate(fd, 4096)
        shared = SharedMemory(
            fd=fd, backend="host", handle_type="memfd", size_bytes=4096, allocation_bytes=4096
        )
        with shared, pytest.raises(InteropError, match="sealed"):
            await backend.import_memory("host:0", shared)
    finally:
        await backend.shutdown()


async def test_host_refuses_a_descriptor_that_is_no_memfd(tmp_path: Path) -> None:
    """/dev/zero, /dev/null and a regular file of the right size are no memfd: refused with
    InteropError naming the descriptor, not a bare OSError from the seal check."""
    from tests.interop.conftest import make_backend

    backend = make_backend("host")
    await backend.initialize()
    regular = tmp_path / "plain"
    regular.write_bytes(bytes(4096))
    try:
        for path in ("/dev/zero", "/dev/null", str(regular)):
            fd = os.open(path, os.O_RDWR)
            shared = SharedMemory(
                fd=fd, backend="host", handle_type="memfd", size_bytes=4096, allocation_bytes=4096
            )
            with shared, pytest.raises(InteropError, match=rf"descriptor {fd}|sealed"):
                await backend.import_memory("host:0", shared)
    finally:
        await backend.shutdown()


async def test_host_export_racing_a_free_exports_the_memory_it_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An export on one thread and a free of the same allocation on another: the export hands out
    that allocation's memory (or InvalidHandleError), never an allocation made after the free that
    reused the descriptor number. The exporting thread's dup is slowed to open the window."""
    import asyncio
    import threading
    import time

    from tests.interop.conftest import make_backend

    backend = make_backend("host")
    await backend.initialize()
    real_dup = os.dup

    def slow_dup(fd: int) -> int:
        if threading.current_thread().name == "exporter":
            time.sleep(0.3)
        return real_dup(fd)

    monkeypatch.setattr(os, "dup", slow_dup)
    try:
        victim = await backend.allocate("host:0", 4096, exportable=True)
        await backend.copy_to_device(b"V" * 4096, victim)
        result: dict[str, Any] = {}

        def exporter() -> None:
            async def run() -> None:
                try:
                    result["shared"] = await backend.export_memory(victim)
                except Exception as exc:
                    result["error"] = exc

            asyncio.run(run())

        thread = threading.Thread(target=exporter, name="exporter")
        thread.start()
        time.sleep(0.1)  # the exporter is inside the export, before its dup returns
        await backend.deallocate(victim)
        later = await backend.allocate("host:0", 4096, exportable=True)
        await backend.copy_to_device(b"S" * 4096, later)
        thread.join()
        assert "error" not in result, result
        with result["shared"] as shared:
            opened = await backend.import_memory("host:0", shared)
        assert await backend.copy_from_device(opened, 0, 8) == b"V" * 8
    finally:
        await backend.shutdown()


@pytest.mark.parametrize(
    "body",
    [b'{"size_bytes": ' + b"9" * 5000 + b"}", b"[" * 30_000],
    ids=["5000-digit integer", "30000 nested arrays"],
)
def test_descriptions_past_jsons_limits_are_refused(body: bytes) -> None:
    before = len(os.listdir("/proc/self/fd"))
    left, right = socket.socketpair()
    with left, right:
        read_end, write_end = os.pipe()
        frame = b"EXOSHM1\0" + len(body).to_bytes(4, "big") + body
        socket.send_fds(left, [frame[:1]], [read_end])
        left.sendall(frame[1:])
        os.close(read_end)
        os.close(write_end)
        with pytest.raises(InteropError, match="not JSON"):
            receive_shared(right)
    assert len(os.listdir("/proc/self/fd")) == before


async def test_only_unix_stream_sockets_carry_shared_memory(backend: GPUBackend[Any]) -> None:
    """A datagram socket would cut the message into parts that never join (receive_shared would
    wait forever): refused on both ends; something that is no socket is a TypeError."""
    with await _shared(backend) as shared:
        for kind in (socket.SOCK_SEQPACKET, socket.SOCK_DGRAM):
            left, right = socket.socketpair(socket.AF_UNIX, kind)
            with left, right:
                with pytest.raises(InteropError, match="SOCK_STREAM"):
                    send_shared(left, shared)
                with pytest.raises(InteropError, match="SOCK_STREAM"):
                    receive_shared(right)
        left, right = socket.socketpair()
        with left, right:
            right.setblocking(False)  # what asyncio hands out: recv would raise BlockingIOError
            with pytest.raises(InteropError, match=r"asyncio\.to_thread"):
                receive_shared(right)
        with pytest.raises(TypeError, match="sock"):
            send_shared(5, shared)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="sock"):
            receive_shared(5)  # type: ignore[arg-type]
        left, right = socket.socketpair()
        with left, right, pytest.raises(TypeError, match="SharedMemory"):
            send_shared(left, 5)  # type: ignore[arg-type]


def test_a_shared_memory_needs_a_descriptor(monkeypatch: pytest.MonkeyPatch) -> None:
    """A descriptor that is no int, or no descriptor number, is refused when the SharedMemory is
    made, and nothing complains later when it is collected."""
    import gc
    import sys

    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    fields: dict[str, Any] = {
        "backend": "host",
        "handle_type": "memfd",
        "size_bytes": 16,
        "allocation_bytes": 16,
    }
    for fd, error in (("x", TypeError), (None, TypeError), (True, TypeError), (-1, InteropError)):
        with pytest.raises(error, match="fd must be"):
            SharedMemory(fd=fd, **fields)
    with pytest.raises(InteropError, match="fd must be"):
        SharedMemory(fd=2**70, **fields)
    gc.collect()
    assert unraisable == []


def test_long_received_values_are_cut_short_in_messages() -> None:
    read_end, write_end = os.pipe()
    os.close(write_end)
    try:
        with pytest.raises(InteropError) as caught:
            SharedMemory(
                fd=read_end,
                backend="host",
                handle_type="memfd",
                size_bytes=16,
                allocation_bytes=16,
                device_uuid="ab" * 30_000,
            )
        assert "device_uuid" in str(caught.value) and len(str(caught.value)) < 300
    finally:
        os.close(read_end)
