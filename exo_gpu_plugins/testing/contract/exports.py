"""Clauses "exports", "export lifetime" and "shared memory": memory that leaves the backend
(docs/interop.md), checked for every kind a backend declares in `Capabilities.export_kinds` and
refused (`InteropError`) where it declares none.

Views are read and written through the kit's own DLPack consumer (`read_dlpack_bytes`, and
stores at the view's address), so no framework is needed to run them.
"""

from __future__ import annotations

import ctypes
from typing import Any

import pytest

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import InteropError
from exo_gpu_plugins.interop import TensorView, read_dlpack_bytes
from exo_gpu_plugins.models import MemoryHandle
from exo_gpu_plugins.testing.contract._base import KitBase, assert_bytes_equal, clause
from exo_gpu_plugins.testing.support import pattern

_SIZE = 64 * 1024


class ExportContract(KitBase):
    """DLPack views and shared memory, by declared capability."""

    def cpu_view(self) -> tuple[MemoryHandle, bytes, TensorView]:
        if "cpu" not in self.caps.export_kinds:
            pytest.skip("'cpu' is not in capabilities().export_kinds")
        data = pattern(0xE1, _SIZE)
        handle = self.alloc(_SIZE, data)
        view = self.run(self.backend.export_tensor(handle, device="cpu"))
        assert isinstance(view, TensorView), f"export_tensor returned {type(view).__name__}"
        assert view.__dlpack_device__() == (1, 0), (
            f"a device='cpu' view says DLPack device {view.__dlpack_device__()}, not (1, 0) (kDLCPU)"
        )
        return handle, data, view

    @clause("exports")
    def test_export_cpu_view_holds_the_allocations_bytes(self) -> None:
        handle, data, view = self.cpu_view()
        assert_bytes_equal(read_dlpack_bytes(view), data, "bytes read through a DLPack view")
        part = self.run(
            self.backend.export_tensor(handle, dtype="U16", shape=(8, 4), offset_bytes=128, device="cpu")
        )
        assert_bytes_equal(read_dlpack_bytes(part), data[128:192], "a view at offset 128")

    @clause("exports")
    def test_export_consumer_writes_reach_the_backend(self) -> None:
        handle, data, view = self.cpu_view()
        # Establish that the backend's own reads are right before they judge the consumer's write.
        assert_bytes_equal(self.read_all(handle), data, "the allocation before the view is written")
        ctypes.memmove(view.data_pointer + 100, b"\xc0\xff\xee", 3)
        expected = bytearray(data)
        expected[100:103] = b"\xc0\xff\xee"
        self.assert_content(handle, expected, "the allocation after a consumer wrote through a view")
        self.run(self.backend.copy_to_device(b"\x11\x22", handle, 7))
        expected[7:9] = b"\x11\x22"
        assert_bytes_equal(read_dlpack_bytes(view), bytes(expected), "a view after copy_to_device")

    @clause("exports")
    def test_export_kinds_not_declared_are_refused(self) -> None:
        kinds = self.caps.export_kinds
        if "fd" not in kinds:
            self.expect_error(
                InteropError,
                lambda: self.backend.allocate(self.device, 4096, exportable=True),
                "allocate(exportable=True) without 'fd' in export_kinds",
            )
        handle = self.alloc(4096)
        if "fd" not in kinds:
            self.expect_error(
                InteropError, lambda: self.backend.export_memory(handle), "export_memory without 'fd'"
            )
        if "cuda" not in kinds:
            self.expect_error(
                InteropError,
                lambda: self.backend.export_tensor(handle, device="cuda"),
                "export_tensor(device='cuda') without 'cuda' in export_kinds",
            )

    @clause("export lifetime")
    @pytest.mark.parametrize("ending", ["deallocate", "shutdown"])
    def test_export_view_outlives_its_handle(self, ending: str) -> None:
        handle, data, view = self.cpu_view()
        if ending == "deallocate":
            self.run(self.backend.deallocate(handle))
            # Memory handed out now must not be the viewed memory.
            for seed in range(8):
                self.alloc(_SIZE, pattern(0x50 + seed, _SIZE))
        else:
            self.run(self.backend.shutdown())
        assert_bytes_equal(
            read_dlpack_bytes(view),
            data,
            f"a view's bytes after {ending}() (memory a view still uses was freed or reused)",
        )

    def shared_pair(self) -> tuple[MemoryHandle, GPUBackend[Any], MemoryHandle, bytes]:
        """An exportable allocation, and the same memory opened by a second instance."""
        if "fd" not in self.caps.export_kinds:
            pytest.skip("'fd' is not in capabilities().export_kinds")
        data = pattern(0xF0, _SIZE)
        handle = self.run(self.backend.allocate(self.device, _SIZE, exportable=True))
        self.run(self.backend.copy_to_device(data, handle))
        other = self.open_backend()
        shared = self.run(self.backend.export_memory(handle))
        try:
            opened = self.run(other.import_memory(self.device_of(other), shared))
        finally:
            shared.close()
        return handle, other, opened, data

    @clause("shared memory")
    def test_export_shared_memory_is_the_same_bytes_both_ways(self) -> None:
        handle, other, opened, data = self.shared_pair()
        self.assert_content(opened, data, "memory opened from a SharedMemory", backend=other)
        self.run(other.copy_to_device(b"\xab" * 16, opened, 32))
        self.run(other.synchronize(self.device_of(other)))
        expected = bytearray(data)
        expected[32:48] = b"\xab" * 16
        self.assert_content(handle, expected, "the exporter's memory after the importer wrote it")

    @clause("shared memory")
    def test_export_shared_memory_outlives_the_exporters_handle(self) -> None:
        handle, other, opened, data = self.shared_pair()
        self.run(self.backend.deallocate(handle))
        for seed in range(4):
            self.run(self.backend.allocate(self.device, _SIZE, exportable=True))
            self.alloc(_SIZE, pattern(0x60 + seed, _SIZE))
        self.assert_content(opened, data, "shared memory after the exporter freed it", backend=other)

    @clause("shared memory")
    def test_export_of_plain_allocations_is_refused(self) -> None:
        if "fd" not in self.caps.export_kinds:
            pytest.skip("'fd' is not in capabilities().export_kinds")
        handle = self.alloc(4096)
        self.expect_error(
            InteropError,
            lambda: self.backend.export_memory(handle),
            "export_memory of an allocation made without exportable=True",
        )
