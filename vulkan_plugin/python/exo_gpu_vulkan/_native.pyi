"""Type declarations (.pyi) for the Rust extension `exo_gpu_vulkan._native` (crate rust/python).

Errors are the core package's classes from `exo_gpu_plugins.errors`:
BackendUnavailableError (no loader/device/validation layer, unsupported strategy),
OutOfMemoryError, InvalidHandleError (unknown/freed allocation id), OutOfBoundsError,
DeviceNotFoundError (bad device index), BackendClosedError (after close()),
TransferError (a Vulkan call failed during write/read/copy), DeviceLostError (a GPUError: the
device was lost or hung), GPUError ("Vulkan validation: ...", "vkXxx failed: VK_ERROR_...",
"internal error: ..." for a Rust panic).
Negative ints / size 0 / unknown strategy raise ValueError; non-int arguments and non-buffer,
non-contiguous or (for destinations) read-only buffers raise TypeError.
Every call that can wait (on a lock, on GPU work, on device creation) releases the GIL; an Engine
may be used from several threads at once. When a transfer fails because the device was lost or
hung while a DMA straight to or from the caller's own pages (the import path) was in flight, the
caller's buffer stays exported for the life of the process (a late DMA may still touch it); other
failures release it. FileReadError (a TransferError): write_from_file hit an I/O error or the
end of the file.
Engines share the process-wide Vulkan instance (one per validation setting, never destroyed)
and logical devices; each engine owns its allocations and close() frees all of them.
With validation, each call fails on the validation errors it caused (attributed by thread).
Tunables for measuring other machines: the EXO_VULKAN_TUNE environment variable (read once per
process; see rust/engine/src/tuning.rs).
"""

from typing import final

from exo_gpu_vulkan.records import DeviceInfoRecord, HeapUsageRecord, StatsRecord

__all__ = ["FAULT_INJECTION", "Engine", "HostMemory", "Retained", "__version__"]

__version__: str
FAULT_INJECTION: bool

@final
class HostMemory:
    """Zero-filled host memory the device reads and writes by DMA (the equivalent of
    cudaHostAlloc; from Engine.host_alloc). Its memory stays valid while this object or any view
    of it lives, also after release() or the engine's close(), which only stop the engine from
    treating it as pinned."""

    @property
    def id(self) -> int: ...
    @property
    def pinned(self) -> bool:
        """False after release()."""
    @property
    def address(self) -> int:
        """Address of the first byte."""
    def __len__(self) -> int: ...
    def view(self) -> memoryview:
        """A flat, writable memoryview (format "B") whose base keeps this object alive."""
    def release(self) -> None:
        """Stop treating the memory as pinned; idempotent."""

@final
class Retained:
    """An allocation's memory kept alive while this object lives, also after Engine.free() or
    close(): what an export hands its consumer (from Engine.retain)."""

    @property
    def host_address(self) -> int | None:
        """Where the CPU reads and writes the memory in place (host-visible, coherent memory),
        else None."""
    @property
    def size(self) -> int: ...

@final
class Engine:
    def __new__(cls, validation: bool = False, strategy: str = "auto") -> Engine:
        """strategy: "auto" (mapped on UMA/CPU devices; on discrete GPUs staging, with small
        copies through a host-visible mapping of VRAM when there is one), "mapped", "staging",
        "import" (DMA straight from/to the caller's page-aligned memory, imported with
        VK_EXT_external_memory_host; the rest through staging)."""
    @staticmethod
    def probe() -> str | None:
        """None when a Vulkan device is usable, else a human reason
        ("libvulkan.so.1 not found (...)", "no Vulkan physical device")."""
    def device_count(self) -> int: ...
    def device_info(self, index: int) -> DeviceInfoRecord:
        """Keys (exo_gpu_vulkan.records.DeviceInfoRecord): index, name, vendor_id, device_id,
        device_type ("discrete" | "integrated" | "virtual" | "cpu" | "other"),
        driver_version (raw u32), api_version (raw u32),
        driver_name (str | None), driver_info (str | None), device_uuid (bytes, 16),
        driver_uuid (bytes, 16), opaque_fd (bool: buffers can be exported and imported as
        opaque file descriptors, VK_KHR_external_memory_fd),
        pci_address ((domain, bus, device, function) | None), compute_units (int | None),
        max_compute_work_group_invocations, max_memory_allocation_size,
        max_buffer_size (int | None), heaps (list of {index, size, device_local}),
        memory_types (list of {index, flags, heap, device_local, host_visible, host_coherent,
        host_cached}), memory_budget (bool), pci_bus_info (bool), external_memory_host (bool),
        min_imported_host_pointer_alignment (int | None), transfer_queue_family (int),
        transfer_only (bool), transfer_queue_count (int), host_visible_device_local (bool),
        strategy ("mapped" | "staging" | "import" | None when the requested strategy is
        unsupported), device_group (indexes of the physical devices in this device's Vulkan
        device group), device_group_subset_allocation (bool)."""
    def memory_heaps(self, index: int) -> list[HeapUsageRecord]:
        """Per heap: index, size, device_local, budget (int | None), usage (int | None),
        engine_allocated (bytes this engine's allocations hold on that heap), process_allocated
        (bytes every engine of the process holds there, pools and staging included: an
        allocation that would take it past size, or past the budget, is OutOfMemoryError)."""
    def allocate(self, index: int, size: int, zeroed: bool = True, exportable: bool = False) -> int:
        """zeroed=False leaves the bytes as the memory held them (the caller overwrites all).
        exportable=True: a dedicated memory object that export_fd can share (InteropError where
        the device cannot)."""
    def export_fd(self, alloc: int) -> tuple[int, int, int, int, int]:
        """(fd, size, allocation_size, memory_type, memory_flags): a new opaque file descriptor of an
        exportable (or imported) allocation, which the caller owns and closes, and what a
        receiver needs to open it. InteropError for other allocations. Does not wait for work
        on the device."""
    def import_fd(
        self,
        index: int,
        fd: int,
        size: int,
        allocation_size: int,
        memory_type: int,
        memory_flags: int,
    ) -> int:
        """Open memory exported elsewhere (fd borrowed: a duplicate is imported) as a new
        allocation of `size` bytes on device `index`. InteropError when the memory type or size
        cannot be this device's, or the driver refuses the descriptor."""
    def retain(self, alloc: int) -> Retained:
        """Keep the allocation's memory alive beyond free() and close()."""
    def allocations_host_mapped(self, index: int) -> bool:
        """Whether every allocation on the device is host-visible, coherent memory."""
    def free(self, alloc: int) -> None: ...
    def write(self, alloc: int, offset: int, src: object) -> None:
        """src: any C-contiguous buffer (bytes, bytearray, memoryview, numpy array, ...)."""
    def read_into(self, alloc: int, offset: int, dst: object) -> None:
        """dst: a writable C-contiguous buffer; reads len(dst) bytes (in bytes)."""
    def read_file_into(self, fd: int, file_offset: int, dst: object) -> None:
        """Fill the writable C-contiguous buffer `dst` from descriptor `fd` (borrowed) at
        `file_offset` by the engine's parallel preads (GIL released); a short read or I/O error
        -> FileReadError."""
    def write_from_file(self, alloc: int, offset: int, fd: int, file_offset: int, size: int) -> None:
        """Fill `size` bytes of `alloc` at `offset` from file descriptor `fd` (borrowed, never
        closed) at `file_offset`: parallel preads straight into the upload ring's slots (or the
        mapping of a host-visible allocation), overlapped with the DMA. Short read, end of file
        or I/O error -> FileReadError (the range then holds partial data)."""
    def host_alloc(self, index: int, size: int) -> HostMemory:
        """Pinned host memory for device `index` (HOST_VISIBLE device memory): write/read_into
        whose host buffer lies inside it take one DMA, no staging copy."""
    def host_register(self, index: int, buffer: object) -> int:
        """Register a C-contiguous buffer (read-only accepted) with device `index`: its pages are
        imported once (VK_EXT_external_memory_host; BackendUnavailableError where the device or
        driver cannot or refuses these pages; DeviceLostError if the device is lost,
        OutOfMemoryError if memory ran out), and write/read_into from or to it are then one DMA.
        The buffer stays
        exported until host_unregister() or close(). ValueError if it overlaps a buffer registered
        or pinned for the same device (one buffer may be registered with several devices).
        Returns the registration id."""
    def host_unregister(self, id: int) -> None:
        """Forget a registration (or pinned buffer); ValueError for an unknown id."""
    def read(self, alloc: int, offset: int, size: int) -> bytes:
        """A new bytes object, filled once (never zeroed first)."""
    def copy(self, src: int, src_offset: int, dst: int, dst_offset: int, size: int) -> None: ...
    def synchronize(self, index: int) -> None: ...
    def stats(self, index: int) -> StatsRecord:
        """Keys: strategy ("mapped" | "staging" | "import" | "unavailable"), device_created (0/1:
        this engine opened the device), live_allocations, live_bytes (this engine's),
        block_count (memory objects backing live buffers), allocator_capacity_bytes,
        allocator_allocated_bytes (the shared device's; running counters, O(1)),
        mapped_bytes, staged_bytes, imported_bytes (bytes this engine moved by each path),
        import_refused (imports the driver refused), compute_copied_bytes (device-to-device bytes
        copied by the compute shader), cross_device_path ("p2p" | "host-import" | "host-staging":
        the path of a link already made, else the planned one), cross_device_bytes (bytes this
        engine copied to or from this device across devices), pinned_bytes (bytes moved by
        direct DMA from or to pinned / registered host memory), direct_read_bytes (file bytes
        read with O_DIRECT, bypassing the page cache, for write_from_file of cold files)."""
    def close(self) -> None:
        """Wait for this engine's work, free all its allocations and drop its pinned buffers and
        registrations (HostMemory objects stay valid memory); idempotent."""
    def _inject_fault(self, kind: str, index: int = 0, timeout_ms: int = 1000) -> None:
        """Test hook, effective only in builds with the `fault-injection` cargo feature
        (FAULT_INJECTION is True; otherwise it raises RuntimeError):
        kind "panic" -> GPUError("internal error: ..."), "device_lost" -> later calls on that
        device raise DeviceLostError("device lost: ..."), "hang" -> every later submission on
        that device waits for a semaphore that is never signalled and waits give up after
        `timeout_ms` (every call then fails with DeviceLostError("device lost: ...") within one
        timeout; nothing the device may touch is freed)."""
