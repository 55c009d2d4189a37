"""Clauses "allocation", "allocation zero-fill", "allocation arguments" and "out of memory"."""

from __future__ import annotations

import pickle
from functools import partial
from typing import Any, cast

import pytest

from exo_gpu_plugins.errors import DeviceNotFoundError, OutOfMemoryError
from exo_gpu_plugins.models import MemoryHandle
from exo_gpu_plugins.testing.contract._base import KitBase, assert_bytes_equal, clause
from exo_gpu_plugins.testing.contract._helpers import SIZE, KiB, MiB, deferred, unknown_device_ids
from exo_gpu_plugins.testing.first_cause import OUTLIVES
from exo_gpu_plugins.testing.support import pattern


class AllocationContract(KitBase):
    """allocate/deallocate: handles, zero-filled memory, argument checks, out-of-memory."""

    @clause("allocation")
    def test_allocate_returns_handle(self) -> None:
        handles = [self.alloc(size) for size in (1, 3, 4096, SIZE)]
        for handle, size in zip(handles, (1, 3, 4096, SIZE), strict=True):
            assert isinstance(handle, MemoryHandle), f"got {type(handle).__name__}"
            assert handle.size_bytes == size, f"size_bytes {handle.size_bytes} != {size}"
            assert handle.device_id == self.device, (
                f"handle.device_id {handle.device_id!r} != {self.device!r}"
            )
        ids = {handle.handle_id for handle in handles}
        assert len(ids) == len(handles), "two live allocations share a handle id"
        live = {handle.handle_id for handle in self.backend.live_handles()}
        assert ids <= live, "live_handles() misses allocations"

    @clause("allocation")
    @pytest.mark.parametrize("size", [1, 3, 4096, SIZE, 256 * KiB + 1])
    def test_whole_allocation_is_usable(self, size: int) -> None:
        data = pattern(size, size)
        handle = self.alloc(size, data)
        self.assert_content(handle, data, f"{size}-byte allocation written in full")
        self.run(self.backend.deallocate(handle))

    @clause("allocation")
    @pytest.mark.parametrize("size", [1, 3, 4096, SIZE, 256 * KiB + 1])
    def test_unzeroed_allocation_is_usable(self, size: int) -> None:
        """`zeroed=False` skips only the clearing: a handle like any other, every byte usable."""
        for round_ in range(2):  # the second round may reuse the memory the first freed
            handle = self.run(self.backend.allocate(self.device, size, zeroed=False))
            assert handle.size_bytes == size, f"size_bytes {handle.size_bytes} != {size}"
            live = {live.handle_id for live in self.backend.live_handles()}
            assert handle.handle_id in live, "live_handles() misses an unzeroed allocation"
            data = pattern(round_ + 7, size)
            self.run(self.backend.copy_to_device(data, handle, 0))
            self.assert_content(handle, data, f"unzeroed {size}-byte allocation written in full")
            self.run(self.backend.deallocate(handle))

    @clause("allocation")
    def test_deallocate_forgets_handle(self) -> None:
        keep, drop = self.alloc(64, b"k" * 64), self.alloc(64, b"d" * 64)
        self.run(self.backend.deallocate(drop))
        live = {handle.handle_id for handle in self.backend.live_handles()}
        assert drop.handle_id not in live and keep.handle_id in live, "live_handles() wrong after a free"
        self.assert_content(keep, b"k" * 64, "the other allocation after a free")

    @clause("allocation")
    def test_equal_copy_of_handle_is_accepted(self) -> None:
        handle = self.alloc(64, b"h" * 64)
        copy = pickle.loads(pickle.dumps(handle))
        assert copy == handle and copy is not handle, "a pickled handle must compare equal"
        got = self.run(self.backend.copy_from_device(copy, 0, 64))
        assert_bytes_equal(got, b"h" * 64, "read through an equal (unpickled) copy of the handle")
        self.run(self.backend.deallocate(copy))

    @clause("allocation")
    def test_keyword_arguments(self) -> None:
        b = self.backend
        src = self.run(b.allocate(device_id=self.device, size_bytes=32))
        dst = self.run(b.allocate(device_id=self.device, size_bytes=32))
        self.run(b.copy_to_device(src=b"a" * 8, dst_handle=src, offset_bytes=4))
        self.run(
            b.copy_device_to_device(
                src_handle=src, dst_handle=dst, size_bytes=8, src_offset_bytes=4, dst_offset_bytes=20
            )
        )
        got = self.run(b.copy_from_device(src_handle=dst, offset_bytes=20, size_bytes=8))
        assert_bytes_equal(
            got, b"a" * 8, "copy_to_device, copy_device_to_device and copy_from_device by keyword"
        )
        out = bytearray(8)
        count = self.run(b.copy_from_device_into(src_handle=src, offset_bytes=4, dst=out))
        assert count == 8, f"copy_from_device_into by keyword returned {count!r}, not 8"
        assert_bytes_equal(bytes(out), b"a" * 8, "copy_from_device_into by keyword")
        self.run(b.synchronize(device_id=self.device))
        self.run(b.deallocate(handle=src))

    @clause("allocation zero-fill")
    @pytest.mark.parametrize("size", [1, 255, 4096, SIZE, 1 * MiB])
    def test_fresh_allocation_reads_zeros(self, size: int) -> None:
        """The first allocation of a new instance: anything but zeros there was written through
        another instance, so that, not the zero-filling, is named as the cause."""
        handle = self.alloc(size)
        got = self.read_all(handle)
        if any(got):
            first = next(i for i, byte in enumerate(got) if byte)
            raise AssertionError(
                f"{OUTLIVES}: the first allocation of a new instance ({size} bytes) holds bytes "
                f"it never wrote (byte {first} reads {got[first]:#04x}): they were written through "
                "an earlier instance, which had been shut down (a pool, cache or arena kept at "
                "module or class level, handed on uncleared?)"
            )
        out = bytearray(b"\xff") * size
        self.run(self.backend.copy_from_device_into(handle, 0, out))
        assert_bytes_equal(bytes(out), bytes(size), f"fresh {size}-byte allocation (read into)")

    @clause("allocation zero-fill")
    @pytest.mark.parametrize("size", [256, 4096, 1 * MiB])
    def test_reused_memory_reads_zeros(self, size: int) -> None:
        """Memory freed by an earlier owner must not leak its bytes into a new allocation."""
        for round_ in range(3):
            dirty = [self.alloc(size, pattern(round_ * 8 + i, size)) for i in range(4)]
            for handle in dirty:
                self.run(self.backend.deallocate(handle))
            fresh = [self.alloc(size) for _ in range(4)]
            for handle in fresh:
                assert_bytes_equal(
                    self.read_all(handle),
                    bytes(size),
                    f"{size}-byte allocation after freeing written ones (round {round_ + 1})",
                )
                self.run(self.backend.deallocate(handle))

    @clause("allocation arguments")
    def test_allocate_wrong_types(self) -> None:
        b, device = self.backend, self.device
        with self.canary_kept("allocate() calls with wrong types"):
            self.expect_errors(
                TypeError,
                [
                    (f"allocate(device, {bad!r})", deferred(b.allocate, device, bad))
                    for bad in (True, False, 16.0, None, "16", b"16", [16])
                ]
                + [
                    (f"allocate({bad!r}, 16)", deferred(b.allocate, bad, 16))
                    for bad in (0, None, b"x:0", 1.5)
                ]
                + [
                    (
                        f"allocate(device, 16, zeroed={bad!r})",
                        partial(b.allocate, device, 16, zeroed=cast(Any, bad)),
                    )
                    for bad in (0, 1, None, "no")
                ],
            )

    @clause("allocation arguments")
    def test_allocate_non_positive_sizes(self) -> None:
        b, device = self.backend, self.device
        with self.canary_kept("allocate() calls with sizes <= 0"):
            self.expect_errors(
                ValueError,
                [
                    (f"allocate(device, {bad})", deferred(b.allocate, device, bad))
                    for bad in (0, -1, -(1 << 40))
                ],
            )

    @clause("allocation arguments")
    def test_allocate_unknown_devices(self) -> None:
        b = self.backend
        with self.canary_kept("allocate() calls on unknown devices"):
            self.expect_errors(
                DeviceNotFoundError,
                [
                    (f"allocate({bad!r}, 16)", deferred(b.allocate, bad, 16))
                    for bad in unknown_device_ids(b)
                ],
            )

    @clause("out of memory")
    def test_allocation_larger_than_device(self) -> None:
        total = self.checked_report().total_bytes
        with self.canary_kept("refused huge allocations"):
            live = len(self.backend.live_handles())
            self.expect_errors(
                OutOfMemoryError,
                [
                    (
                        f"allocate(device, {size}, zeroed={zeroed})",
                        partial(self.backend.allocate, self.device, size, zeroed=zeroed),
                    )
                    for size in (total + 1, 4 * total + 4096, 1 << 62)
                    if size > total
                    for zeroed in (True, False)
                ],
            )
            assert len(self.backend.live_handles()) == live, "a refused allocation left a handle"
            data = pattern(7, 64 * KiB)
            handle = self.alloc(len(data), data)
            self.assert_content(handle, data, "allocation made after an out-of-memory error")
            self.run(self.backend.deallocate(handle))
