"""Host-device copies: clauses "copy to device", "copy from device", "copy from device into"
(CopyContract joins them with copy_checks.py's bounds, arguments and synchronize)."""

from __future__ import annotations

import array
from collections.abc import Callable

import pytest

from exo_gpu_plugins.testing.contract._base import KitBase, assert_bytes_equal, clause
from exo_gpu_plugins.testing.contract._helpers import SIZE, deferred
from exo_gpu_plugins.testing.contract.copy_checks import CopyChecks
from exo_gpu_plugins.testing.support import check_reads, pattern


def _sources(data: bytes) -> dict[str, Callable[[], object]]:
    """Ways to hand the same bytes to copy_to_device."""

    def numpy_float32() -> object:
        numpy = pytest.importorskip("numpy")
        return numpy.frombuffer(data, dtype=numpy.float32).copy()

    def two_dimensional() -> object:
        return memoryview(data).cast("B", (16, len(data) // 16))

    def array_of_ints() -> object:
        return array.array("I", data)

    def memoryview_slice() -> object:
        padded = bytearray(b"\xee" * 5) + data + bytearray(b"\xee" * 5)
        return memoryview(padded)[5 : 5 + len(data)]

    return {
        "bytes": lambda: data,
        "bytearray": lambda: bytearray(data),
        "memoryview-slice": memoryview_slice,
        "array.array": array_of_ints,
        "2-d-memoryview": two_dimensional,
        "numpy-float32": numpy_float32,
    }


_WRITE_RANGES = [
    (0, 1),
    (1, 7),
    (7, SIZE - 7),
    (4095, 8),
    (SIZE - 1, 1),
    (SIZE - 16, 16),
    (0, SIZE),
    (2048, 0),
]


class _HostTransfers(KitBase):
    """copy_to_device / copy_from_device / copy_from_device_into move the right bytes."""

    @clause("copy to device")
    @pytest.mark.parametrize(("offset", "length"), _WRITE_RANGES)
    def test_write_at_offset(self, offset: int, length: int) -> None:
        handle, model = self.filled()
        data = pattern(offset * 31 + length, length)
        self.run(self.backend.copy_to_device(data, handle, offset))
        model[offset : offset + length] = data
        self.assert_content(handle, model, f"after writing {length} bytes at offset {offset}")

    @clause("copy to device")
    @pytest.mark.parametrize("kind", list(_sources(b"")))
    def test_source_types(self, kind: str) -> None:
        data = pattern(sum(kind.encode()), 256)
        source = _sources(data)[kind]()
        handle, model = self.filled(seed=3)
        self.run(self.backend.copy_to_device(source, handle, 100))
        model[100:356] = data
        self.assert_content(handle, model, f"after writing a {kind} at offset 100")

    @clause("copy to device")
    def test_write_default_offset_is_zero(self) -> None:
        handle, model = self.filled()
        self.run(self.backend.copy_to_device(b"\x09" * 10, handle))
        model[:10] = b"\x09" * 10
        self.assert_content(handle, model, "after copy_to_device without offset")

    @clause("copy to device")
    def test_unusable_sources_refused(self) -> None:
        handle, model = self.filled()
        strided = memoryview(bytearray(64))[::2]
        with self.canary_kept("refused sources"):
            self.expect_errors(
                TypeError,
                [
                    (
                        f"copy_to_device({label})",
                        deferred(self.backend.copy_to_device, src, handle, 0),
                    )
                    for label, src in (
                        ("str", "abc"),
                        ("int", 7),
                        ("None", None),
                        ("list", [1, 2]),
                        ("non-contiguous memoryview", strided),
                    )
                ],
            )
        self.assert_content(handle, model, "allocation after refused writes")

    @clause("copy from device")
    def test_reads_agree_with_a_whole_read(self) -> None:
        """Reads on their own: ranges read back as the same bytes of one whole read (first, so that
        a wrong read is named as one before other tests compare through it)."""
        self.run(check_reads(self.backend, self.device))

    @clause("copy from device")
    @pytest.mark.parametrize(("offset", "length"), _WRITE_RANGES)
    def test_read_at_offset(self, offset: int, length: int) -> None:
        handle, model = self.filled()
        got = self.run(self.backend.copy_from_device(handle, offset, length))
        assert type(got) is bytes, f"copy_from_device returned {type(got).__name__}, not bytes"
        assert_bytes_equal(
            got,
            bytes(model[offset : offset + length]),
            f"copy_from_device(offset={offset}, size={length})",
        )

    @clause("copy from device")
    def test_read_sees_latest_write(self) -> None:
        """Reads return what was last written, never a cached earlier state."""
        handle, model = self.filled()
        for step in range(4):
            offset = 100 * step
            assert_bytes_equal(
                self.run(self.backend.copy_from_device(handle, offset, 512)),
                bytes(model[offset : offset + 512]),
                f"read before write {step}",
            )
            data = pattern(50 + step, 300)
            self.run(self.backend.copy_to_device(data, handle, offset + 50))
            model[offset + 50 : offset + 350] = data
            assert_bytes_equal(
                self.run(self.backend.copy_from_device(handle, offset, 512)),
                bytes(model[offset : offset + 512]),
                f"read after write {step}",
            )
        other = self.alloc(SIZE, pattern(99, SIZE))
        self.run(self.backend.copy_device_to_device(other, handle, 1000, 0, 2000))
        model[2000:3000] = pattern(99, SIZE)[:1000]
        self.assert_content(handle, model, "read after a device-to-device copy into it")

    @clause("copy from device into")
    def test_read_into_bytearray(self) -> None:
        handle, model = self.filled()
        out = bytearray(1000)
        count = self.run(self.backend.copy_from_device_into(handle, 333, out))
        assert count == 1000, f"copy_from_device_into returned {count!r}, not 1000"
        assert_bytes_equal(bytes(out), bytes(model[333:1333]), "read into bytearray")

    @clause("copy from device into")
    def test_read_into_memoryview_slice(self) -> None:
        handle, model = self.filled()
        buffer = bytearray(b"\xee") * 3000
        count = self.run(self.backend.copy_from_device_into(handle, 17, memoryview(buffer)[1000:2000]))
        assert count == 1000, f"copy_from_device_into returned {count!r}, not 1000"
        assert_bytes_equal(bytes(buffer[1000:2000]), bytes(model[17:1017]), "read into a slice")
        assert buffer[:1000] == b"\xee" * 1000 and buffer[2000:] == b"\xee" * 1000, (
            "copy_from_device_into wrote outside the memoryview slice"
        )

    @clause("copy from device into")
    @pytest.mark.parametrize("dtype", ["uint8", "float32", "int64"])
    def test_read_into_numpy(self, dtype: str) -> None:
        numpy = pytest.importorskip("numpy")
        handle, model = self.filled()
        out = numpy.zeros(4096 // numpy.dtype(dtype).itemsize, dtype=dtype)
        count = self.run(self.backend.copy_from_device_into(handle, 8, out))
        assert count == 4096, f"returned {count!r}, not the array's nbytes 4096"
        assert_bytes_equal(out.tobytes(), bytes(model[8:4104]), f"read into numpy {dtype} array")

    @clause("copy from device into")
    def test_read_into_read_only_refused(self) -> None:
        handle, model = self.filled()
        cases: list[tuple[str, Callable[[], object]]] = [
            ("bytes", lambda: self.backend.copy_from_device_into(handle, 0, bytes(16))),
            (
                "memoryview of bytes",
                lambda: self.backend.copy_from_device_into(handle, 0, memoryview(bytes(16))),
            ),
            (
                "read-only memoryview",
                lambda: self.backend.copy_from_device_into(
                    handle, 0, memoryview(bytearray(16)).toreadonly()
                ),
            ),
            ("str", lambda: self.backend.copy_from_device_into(handle, 0, "abcd")),
            ("None", lambda: self.backend.copy_from_device_into(handle, 0, None)),
        ]
        try:
            import numpy
        except ImportError:
            pass
        else:
            frozen = numpy.zeros(16, dtype=numpy.uint8)
            frozen.flags.writeable = False
            cases.append(
                ("read-only numpy array", lambda: self.backend.copy_from_device_into(handle, 0, frozen))
            )
        with self.canary_kept("refused destinations"):
            self.expect_errors(TypeError, cases)
        self.assert_content(handle, model, "allocation after refused reads")


class CopyContract(CopyChecks, _HostTransfers):
    """copy_to_device / copy_from_device / copy_from_device_into, their bounds and arguments.

    Bases in this order so that pytest (reverse MRO) runs the transfers before the checks."""
