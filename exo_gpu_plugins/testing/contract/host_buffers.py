"""Clauses "host buffers" and "host buffer release": allocate_host_buffer / register_host_buffer give
memory that copies use byte for byte, release_host_buffer and shutdown let go of it exactly once.

Every backend has these calls (the core's defaults give ordinary memory), so nothing here skips;
`pinned` is checked against `capabilities().pinned_host_memory` and `.host_registration`.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from exo_gpu_plugins.errors import DeviceNotFoundError, InvalidHandleError, OutOfMemoryError
from exo_gpu_plugins.host_buffer import HostBuffer
from exo_gpu_plugins.testing.contract._base import KitBase, assert_bytes_equal, clause
from exo_gpu_plugins.testing.contract._helpers import SIZE, MiB, deferred, unknown_device_ids
from exo_gpu_plugins.testing.support import pattern


class HostBufferContract(KitBase):
    """Host buffers: zero-filled, writable, usable as copy source and destination, released once."""

    def host_buffer(self, size: int) -> HostBuffer:
        """A new allocated host buffer on the tested device, checked for its fields."""
        hb = self.run(self.backend.allocate_host_buffer(self.device, size))
        assert isinstance(hb, HostBuffer), f"allocate_host_buffer returned {type(hb).__name__}"
        assert (hb.device_id, hb.size_bytes, len(hb)) == (self.device, size, size), (
            f"host buffer says device {hb.device_id!r}, size_bytes {hb.size_bytes}, len {len(hb)}; "
            f"asked for {size} bytes on {self.device!r}"
        )
        assert not hb.registered, "an allocated host buffer says registered=True"
        if not self.caps.pinned_host_memory:
            assert not hb.pinned, "pinned=True but capabilities().pinned_host_memory is False"
        return hb

    @clause("host buffers")
    @pytest.mark.parametrize("size", [1, 4096, SIZE, 1 * MiB])
    def test_allocated_buffer_is_zeroed_and_writable(self, size: int) -> None:
        hb = self.host_buffer(size)
        view = hb.view
        assert (view.format, view.ndim, view.nbytes, view.readonly) == ("B", 1, size, False), (
            f"view is format {view.format!r}, {view.ndim}-d, {view.nbytes} bytes, "
            f"readonly={view.readonly}; expected a flat writable 'B' view of {size} bytes"
        )
        assert_bytes_equal(bytes(view), bytes(size), f"fresh {size}-byte host buffer")
        data = pattern(size + 5, size)
        view[:] = data
        assert_bytes_equal(bytes(hb.view), data, f"{size}-byte host buffer after writing it")
        self.run(self.backend.release_host_buffer(hb))

    @clause("host buffers")
    def test_pinned_when_capabilities_say_so(self) -> None:
        if not self.caps.pinned_host_memory:
            pytest.skip("capabilities().pinned_host_memory is False: host buffers are ordinary memory")
        hb = self.host_buffer(1 * MiB)
        assert hb.pinned, "capabilities().pinned_host_memory is True but a 1 MiB buffer is not pinned"

    @clause("host buffers")
    @pytest.mark.parametrize(("offset", "length"), [(0, SIZE), (1, 7), (4095, 4098), (SIZE - 1, 1)])
    def test_allocated_buffer_as_copy_source(self, offset: int, length: int) -> None:
        handle, model = self.filled()
        hb = self.host_buffer(length)
        data = pattern(offset + 7, length)
        hb.view[:] = data
        self.run(self.backend.copy_to_device(hb, handle, offset))
        model[offset : offset + length] = data
        self.assert_content(handle, model, f"after copy_to_device of a {length}-byte host buffer")
        assert_bytes_equal(bytes(hb.view), data, "host buffer after it was copied from")

    @clause("host buffers")
    @pytest.mark.parametrize(("offset", "length"), [(0, SIZE), (1, 7), (4095, 4098), (SIZE - 1, 1)])
    def test_allocated_buffer_as_copy_destination(self, offset: int, length: int) -> None:
        handle, model = self.filled(seed=9)
        hb = self.host_buffer(length)
        count = self.run(self.backend.copy_from_device_into(handle, offset, hb))
        assert count == length, f"copy_from_device_into a host buffer returned {count!r}, not {length}"
        assert_bytes_equal(bytes(hb.view), bytes(model[offset : offset + length]), "host buffer")
        self.assert_content(handle, model, "allocation after it was read into a host buffer")

    @clause("host buffers")
    def test_slice_of_a_host_buffer(self) -> None:
        handle, model = self.filled(seed=10)
        hb = self.host_buffer(3000)
        hb.view[:] = b"\xee" * 3000
        self.run(self.backend.copy_from_device_into(handle, 17, hb.view[1000:2000]))
        got = bytes(hb.view)
        assert_bytes_equal(got[1000:2000], bytes(model[17:1017]), "read into a host buffer slice")
        assert got[:1000] == b"\xee" * 1000 and got[2000:] == b"\xee" * 1000, (
            "copy_from_device_into wrote outside the host buffer slice"
        )

    @clause("host buffers")
    @pytest.mark.parametrize("kind", ["bytearray", "numpy-uint8", "numpy-float32"])
    def test_registered_writable_buffer(self, kind: str) -> None:
        memory: object = bytearray(4099)
        if kind.startswith("numpy"):
            numpy = pytest.importorskip("numpy")
            memory = numpy.zeros(1000, dtype=kind.removeprefix("numpy-"))
        raw = memoryview(memory).cast("B")  # type: ignore[arg-type]
        hb = self.run(self.backend.register_host_buffer(self.device, memory))
        assert isinstance(hb, HostBuffer) and hb.registered, "register_host_buffer: registered=False"
        assert hb.size_bytes == raw.nbytes, f"size_bytes {hb.size_bytes} != {raw.nbytes}"
        if not self.caps.host_registration:
            assert not hb.pinned, "pinned=True but capabilities().host_registration is False"
        assert not hb.view.readonly, f"the view of a registered {kind} is read-only"
        hb.view[:4] = b"\x01\x02\x03\x04"
        assert bytes(raw[:4]) == b"\x01\x02\x03\x04", "the registered view is not the caller's memory"
        handle, model = self.filled(seed=11)
        self.run(self.backend.copy_from_device_into(handle, 5, hb))
        assert_bytes_equal(bytes(raw), bytes(model[5 : 5 + raw.nbytes]), f"registered {kind}")
        data = pattern(12, raw.nbytes)
        raw[:] = data
        self.run(self.backend.copy_to_device(hb, handle, 0))
        model[: raw.nbytes] = data
        self.assert_content(handle, model, f"after copy_to_device from a registered {kind}")
        self.run(self.backend.release_host_buffer(hb))
        assert bytes(raw) == data, "releasing a registration changed the caller's memory"

    @clause("host buffers")
    def test_registered_read_only_buffer(self) -> None:
        data = pattern(13, 4096)
        hb = self.run(self.backend.register_host_buffer(self.device, data))
        assert hb.registered and hb.view.readonly, "the view of registered bytes must be read-only"
        handle, model = self.filled(seed=14)
        self.run(self.backend.copy_to_device(hb, handle, 100))
        model[100:4196] = data
        self.assert_content(handle, model, "after copy_to_device from registered bytes")
        self.expect_error(
            TypeError,
            lambda: self.backend.copy_from_device_into(handle, 0, hb),
            "copy_from_device_into a registered read-only buffer",
        )
        self.assert_content(handle, model, "allocation after a refused read into read-only memory")

    @clause("host buffers")
    def test_host_buffer_arguments(self) -> None:
        b, device = self.backend, self.device
        with self.canary_kept("refused host buffer calls"):
            self.expect_errors(
                TypeError,
                [
                    (
                        f"allocate_host_buffer(device, {bad!r})",
                        deferred(b.allocate_host_buffer, device, bad),
                    )
                    for bad in (True, 16.0, None, "16")
                ]
                + [
                    (
                        f"register_host_buffer(device, {bad!r})",
                        deferred(b.register_host_buffer, device, bad),
                    )
                    for bad in ("text", 7, None, [1, 2])
                ]
                + [
                    (f"allocate_host_buffer({bad!r}, 16)", deferred(b.allocate_host_buffer, bad, 16))
                    for bad in (0, None)
                ]
                + [
                    (f"release_host_buffer({bad!r})", deferred(b.release_host_buffer, bad))
                    for bad in (None, bytearray(4), memoryview(b"ab"))
                ],
            )
            self.expect_errors(
                ValueError,
                [
                    (
                        f"allocate_host_buffer(device, {bad})",
                        deferred(b.allocate_host_buffer, device, bad),
                    )
                    for bad in (0, -1)
                ]
                + [("register_host_buffer(device, b'')", deferred(b.register_host_buffer, device, b""))],
            )
            self.expect_errors(
                DeviceNotFoundError,
                [
                    (f"allocate_host_buffer({bad!r}, 16)", deferred(b.allocate_host_buffer, bad, 16))
                    for bad in unknown_device_ids(b)[:3]
                ]
                + [
                    (f"register_host_buffer({bad!r}, ...)", deferred(b.register_host_buffer, bad, b"x"))
                    for bad in unknown_device_ids(b)[:3]
                ],
            )
        assert b.live_host_buffers() == [], "a refused call left a host buffer behind"

    @clause("host buffers")
    def test_host_buffer_larger_than_memory(self) -> None:
        with self.canary_kept("a refused huge host buffer"):
            self.expect_error(
                OutOfMemoryError,
                lambda: self.backend.allocate_host_buffer(self.device, 1 << 62),
                "allocate_host_buffer of 2**62 bytes",
            )
        assert self.backend.live_host_buffers() == [], "a refused host buffer is listed as live"

    @clause("host buffer release")
    def test_release_twice_and_view_after_release(self) -> None:
        hb = self.host_buffer(4096)
        kept = hb.view  # taken before the release: stays valid memory
        assert hb in self.backend.live_host_buffers(), "live_host_buffers() misses a new buffer"
        self.run(self.backend.release_host_buffer(hb))
        assert hb.released, "released is False after release_host_buffer"
        assert hb not in self.backend.live_host_buffers(), "a released buffer is still listed"
        self.expect_errors(
            InvalidHandleError,
            [
                ("second release_host_buffer()", lambda: self.backend.release_host_buffer(hb)),
                ("HostBuffer.view after release", lambda: hb.view),
            ],
        )
        kept[:3] = b"abc"
        assert bytes(kept[:3]) == b"abc", "a view taken before the release is no longer usable"

    @clause("host buffer release")
    def test_released_buffer_refused_by_copies(self) -> None:
        handle, model = self.filled(seed=15)
        hb = self.host_buffer(64)
        self.run(self.backend.release_host_buffer(hb))
        calls: list[tuple[str, Callable[[], object]]] = [
            ("copy_to_device(released)", lambda: self.backend.copy_to_device(hb, handle, 0)),
            (
                "copy_from_device_into(released)",
                lambda: self.backend.copy_from_device_into(handle, 0, hb),
            ),
        ]
        self.expect_errors(InvalidHandleError, calls)
        self.assert_content(handle, model, "allocation after copies with a released host buffer")

    @clause("host buffer release")
    def test_release_of_another_instance_buffer(self) -> None:
        other = self.open_backend()
        theirs = self.run(other.allocate_host_buffer(self.device_of(other), 64))
        self.expect_error(
            InvalidHandleError,
            lambda: self.backend.release_host_buffer(theirs),
            "release_host_buffer of another instance's buffer",
        )
        assert not theirs.released, "a refused release marked the other instance's buffer released"
        self.run(other.release_host_buffer(theirs))

    @clause("host buffer release")
    def test_shutdown_releases_host_buffers(self) -> None:
        backend = self.open_backend()
        device = self.device_of(backend)
        caller = bytearray(pattern(16, 512))
        buffers = [
            self.run(backend.allocate_host_buffer(device, 4096)),
            self.run(backend.allocate_host_buffer(device, 1)),
            self.run(backend.register_host_buffer(device, caller)),
        ]
        self.run(backend.shutdown())
        assert backend.live_host_buffers() == [], "live_host_buffers() not empty after shutdown"
        for hb in buffers:
            assert hb.released, f"{hb!r} is not released after shutdown"
            self.expect_error(
                InvalidHandleError, deferred(_view_of, hb), f"view of {hb!r} after shutdown"
            )
        assert caller == pattern(16, 512), "shutdown changed a registered caller's memory"


def _view_of(hb: HostBuffer) -> memoryview:
    return hb.view
