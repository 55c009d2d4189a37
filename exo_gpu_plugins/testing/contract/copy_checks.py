"""Clauses "copy bounds", "copy arguments" and "synchronize": the half of CopyContract that checks
what host-device copies refuse, and that synchronize neither fails nor loses work."""

from __future__ import annotations

import asyncio

import pytest

from exo_gpu_plugins.errors import DeviceNotFoundError, OutOfBoundsError
from exo_gpu_plugins.testing.contract._base import KitBase, assert_bytes_equal, clause
from exo_gpu_plugins.testing.contract._helpers import SIZE, KiB, deferred, unknown_device_ids
from exo_gpu_plugins.testing.support import pattern


class CopyChecks(KitBase):
    """Out-of-bounds and ill-typed copies are refused with nothing written; synchronize works."""

    @clause("copy bounds")
    @pytest.mark.parametrize(
        ("offset", "length"), [(SIZE - 3, 4), (SIZE, 1), (SIZE + 10, 0), (0, SIZE + 1), (1 << 40, 1)]
    )
    def test_write_out_of_bounds(self, offset: int, length: int) -> None:
        handle, model = self.filled()
        with self.canary_kept("an out-of-bounds write"):
            exc = self.expect_error(
                OutOfBoundsError,
                lambda: self.backend.copy_to_device(b"\x55" * length, handle, offset),
                f"copy_to_device of {length} bytes at offset {offset} into {SIZE} bytes",
            )
            assert isinstance(exc, ValueError), "OutOfBoundsError must also be a ValueError"
        self.assert_content(
            handle, model, "allocation after a refused out-of-bounds write (nothing may be written)"
        )

    @clause("copy bounds")
    @pytest.mark.parametrize(
        ("offset", "length"), [(SIZE - 3, 4), (SIZE, 1), (SIZE + 10, 0), (0, SIZE + 1), (1 << 40, 1)]
    )
    def test_read_out_of_bounds(self, offset: int, length: int) -> None:
        handle, model = self.filled()
        with self.canary_kept("out-of-bounds reads"):
            self.expect_errors(
                OutOfBoundsError,
                [
                    (
                        f"copy_from_device(offset={offset}, size={length})",
                        lambda: self.backend.copy_from_device(handle, offset, length),
                    ),
                    (
                        f"copy_from_device_into(offset={offset}, {length}-byte dst)",
                        lambda: self.backend.copy_from_device_into(handle, offset, bytearray(length)),
                    ),
                ],
            )
        self.assert_content(handle, model, "allocation after refused reads")

    @clause("copy bounds")
    def test_zero_length_at_end(self) -> None:
        handle, model = self.filled()
        self.run(self.backend.copy_to_device(b"", handle, SIZE))
        got = self.run(self.backend.copy_from_device(handle, SIZE, 0))
        assert got == b"", f"copy_from_device of 0 bytes at the end returned {got!r:.60}, not b''"
        count = self.run(self.backend.copy_from_device_into(handle, SIZE, bytearray()))
        assert count == 0, f"copy_from_device_into of 0 bytes at the end returned {count!r}, not 0"
        self.assert_content(handle, model, "allocation after zero-length copies at its end")

    @clause("copy arguments")
    def test_copy_to_device_arguments(self) -> None:
        b = self.backend
        handle, model = self.filled()
        with self.canary_kept("copy_to_device with bad arguments"):
            self.expect_errors(
                TypeError,
                [
                    (f"offset {bad!r}", deferred(b.copy_to_device, b"x", handle, bad))
                    for bad in (True, 1.0, None, "0")
                ]
                + [
                    (f"handle {bad!r}", deferred(b.copy_to_device, b"x", bad, 0))
                    for bad in ("handle", None, 0, {"handle_id": handle.handle_id})
                ],
            )
            self.expect_errors(
                ValueError,
                [
                    ("offset -1", lambda: b.copy_to_device(b"x", handle, -1)),
                ],
            )
        self.assert_content(handle, model, "allocation after refused writes")

    @clause("copy arguments")
    def test_copy_from_device_arguments(self) -> None:
        b = self.backend
        handle, model = self.filled()
        with self.canary_kept("copy_from_device(_into) with bad arguments"):
            self.expect_errors(
                TypeError,
                [
                    (f"offset {bad!r}", deferred(b.copy_from_device, handle, bad, 1))
                    for bad in (True, 1.0, None, "0")
                ]
                + [
                    # (size None is allowed: the rest of the allocation)
                    (f"size {bad!r}", deferred(b.copy_from_device, handle, 0, bad))
                    for bad in (True, 1.0, "1")
                ]
                + [
                    (
                        f"into offset {bad!r}",
                        deferred(b.copy_from_device_into, handle, bad, bytearray(1)),
                    )
                    for bad in (True, 1.0, None, "0")
                ]
                + [
                    (f"handle {bad!r}", deferred(b.copy_from_device, bad, 0, 1))
                    for bad in ("handle", None, 0)
                ]
                + [
                    (
                        f"into handle {bad!r}",
                        deferred(b.copy_from_device_into, bad, 0, bytearray(1)),
                    )
                    for bad in ("handle", None, 0)
                ],
            )
            self.expect_errors(
                ValueError,
                [
                    ("offset -1", lambda: b.copy_from_device(handle, -1, 1)),
                    ("size -1", lambda: b.copy_from_device(handle, 0, -1)),
                    ("into offset -1", lambda: b.copy_from_device_into(handle, -1, bytearray(1))),
                ],
            )
        self.assert_content(handle, model, "allocation after refused reads")

    @clause("copy arguments")
    def test_copy_device_to_device_arguments(self) -> None:
        b = self.backend
        src, src_model = self.filled(seed=5)
        dst, dst_model = self.filled(seed=6)
        with self.canary_kept("copy_device_to_device with bad arguments"):
            self.expect_errors(
                TypeError,
                [
                    (f"size {bad!r}", deferred(b.copy_device_to_device, src, dst, bad))
                    for bad in (True, 1.0, None, "1")
                ]
                + [
                    (f"src_offset {bad!r}", deferred(b.copy_device_to_device, src, dst, 1, bad, 0))
                    for bad in (True, 1.0, None)
                ]
                + [
                    (f"dst_offset {bad!r}", deferred(b.copy_device_to_device, src, dst, 1, 0, bad))
                    for bad in (True, 1.0, None)
                ]
                + [
                    (f"src handle {bad!r}", deferred(b.copy_device_to_device, bad, dst, 1))
                    for bad in ("handle", None)
                ]
                + [
                    (f"dst handle {bad!r}", deferred(b.copy_device_to_device, src, bad, 1))
                    for bad in ("handle", None)
                ],
            )
            self.expect_errors(
                ValueError,
                [
                    ("size -1", lambda: b.copy_device_to_device(src, dst, -1)),
                    ("src_offset -1", lambda: b.copy_device_to_device(src, dst, 1, -1, 0)),
                    ("dst_offset -1", lambda: b.copy_device_to_device(src, dst, 1, 0, -1)),
                ],
            )
            self.expect_errors(
                OutOfBoundsError,
                [
                    (f"size {SIZE + 1}", lambda: b.copy_device_to_device(src, dst, SIZE + 1)),
                    (
                        "src range past the end",
                        lambda: b.copy_device_to_device(src, dst, 10, SIZE - 5, 0),
                    ),
                    (
                        "dst range past the end",
                        lambda: b.copy_device_to_device(src, dst, 10, 0, SIZE - 5),
                    ),
                    (
                        "same allocation past the end",
                        lambda: b.copy_device_to_device(src, src, 10, 0, SIZE - 9),
                    ),
                ],
            )
        self.assert_content(src, src_model, "source after refused copies")
        self.assert_content(dst, dst_model, "destination after refused copies (nothing written)")

    @clause("synchronize")
    def test_synchronize_idle(self) -> None:
        for device in self.backend.list_devices():
            self.run(self.backend.synchronize(device.device_id))

    @clause("synchronize")
    def test_synchronize_after_work(self) -> None:
        b = self.backend
        src, dst = self.alloc(64 * KiB), self.alloc(64 * KiB)
        chunks = [pattern(200 + i, 4 * KiB) for i in range(16)]

        async def work() -> bytes:
            await asyncio.gather(
                *(b.copy_to_device(chunk, src, i * 4 * KiB) for i, chunk in enumerate(chunks))
            )
            await asyncio.gather(b.copy_device_to_device(src, dst, 64 * KiB), b.synchronize(self.device))
            await b.synchronize(self.device)
            return await b.copy_from_device(dst, 0, 64 * KiB)

        assert_bytes_equal(self.run(work()), b"".join(chunks), "data after synchronize")

    @clause("synchronize")
    def test_synchronize_bad_device(self) -> None:
        b = self.backend
        self.expect_errors(
            DeviceNotFoundError,
            [
                (f"synchronize({bad!r})", deferred(b.synchronize, bad))
                for bad in unknown_device_ids(b)[:4]
            ],
        )
        self.expect_errors(
            TypeError,
            [(f"synchronize({bad!r})", deferred(b.synchronize, bad)) for bad in (0, None)],
        )
