"""Clauses "device-to-device", "device-to-device overlap" and "cross-device copy"."""

from __future__ import annotations

import pytest

from exo_gpu_plugins.testing.contract._base import KitBase, clause
from exo_gpu_plugins.testing.contract._helpers import SIZE
from exo_gpu_plugins.testing.support import pattern

_D2D_CASES = [
    (SIZE, 0, 0),
    (1, 0, SIZE - 1),
    (1, SIZE - 1, 0),
    (4096, 1, 4095),
    (777, 13, 7000),
    (0, 5, 5),
]
_OVERLAP_CASES = [
    (4096, 0, 1),
    (4096, 1, 0),
    (4096, 0, 2048),
    (4096, 2048, 0),
    (SIZE - 1, 0, 1),
    (SIZE - 1, 1, 0),
    (4096, 100, 100),
    (3, 5, 6),
    (1000, 4000, 3999),
]


class DeviceToDeviceContract(KitBase):
    """copy_device_to_device: offsets, overlap within one allocation, and across devices."""

    @clause("device-to-device")
    @pytest.mark.parametrize(("size", "src_offset", "dst_offset"), _D2D_CASES)
    def test_copy_between_allocations(self, size: int, src_offset: int, dst_offset: int) -> None:
        src_data, dst_data = pattern(11, SIZE), pattern(12, SIZE)
        src, dst = self.alloc(SIZE, src_data), self.alloc(SIZE, dst_data)
        self.run(self.backend.copy_device_to_device(src, dst, size, src_offset, dst_offset))
        model = bytearray(dst_data)
        model[dst_offset : dst_offset + size] = src_data[src_offset : src_offset + size]
        what = f"copy of {size} bytes from offset {src_offset} to offset {dst_offset}"
        self.assert_content(dst, model, f"destination after {what}")
        self.assert_content(src, src_data, f"source after {what}")

    @clause("device-to-device")
    def test_copy_defaults_offsets_to_zero(self) -> None:
        src, dst = self.alloc(64, b"s" * 64), self.alloc(128, b"d" * 128)
        self.run(self.backend.copy_device_to_device(src, dst, 64))
        self.assert_content(dst, b"s" * 64 + b"d" * 64, "destination of a copy without offsets")

    @clause("device-to-device overlap")
    @pytest.mark.parametrize(("size", "src_offset", "dst_offset"), _OVERLAP_CASES)
    def test_overlapping_copy_is_memmove(self, size: int, src_offset: int, dst_offset: int) -> None:
        data = pattern(13, SIZE)
        handle = self.alloc(SIZE, data)
        self.run(self.backend.copy_device_to_device(handle, handle, size, src_offset, dst_offset))
        model = bytearray(data)
        model[dst_offset : dst_offset + size] = data[src_offset : src_offset + size]
        self.assert_content(
            handle,
            model,
            f"memmove of {size} bytes from {src_offset} to {dst_offset} within one allocation",
        )

    @clause("cross-device copy")
    def test_copy_across_devices(self) -> None:
        devices = [device.device_id for device in self.backend.list_devices()]
        if len(devices) < 2:
            pytest.skip("needs two devices; the backend lists one")
        first, second = devices[0], devices[1]
        for device in (first, second):
            if not self.backend.capabilities(device).cross_device_copy:
                pytest.skip(f"capabilities({device!r}).cross_device_copy is False")
        a_data, b_data = pattern(21, SIZE), pattern(22, SIZE)
        a = self.alloc(SIZE, a_data, device=first)
        b = self.alloc(SIZE, b_data, device=second)
        self.run(self.backend.copy_device_to_device(a, b, 3000, 7, 1001))
        b_model = bytearray(b_data)
        b_model[1001:4001] = a_data[7:3007]
        self.assert_content(b, b_model, f"{second} after a copy from {first}")
        self.run(self.backend.copy_device_to_device(b, a, SIZE - 1, 1, 0))
        a_model = bytearray(a_data)
        a_model[0 : SIZE - 1] = b_model[1:]
        self.assert_content(a, a_model, f"{first} after a copy from {second}")
