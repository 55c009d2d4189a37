"""`VulkanBackend`: the contract on real Vulkan memory, through the Rust engine in `_native`.

The core has already checked every argument when a hook runs, so the hooks only choose where the
work runs: small operations call the engine inline (it releases the GIL; a thread hop would cost
more than the copy), large ones run in the event loop's executor so an `await` never stalls the
loop for the length of a big memcpy or DMA.

Settings (environment): `EXO_VULKAN_VALIDATION=1` turns on VK_LAYER_KHRONOS_validation and makes
each validation error an error of the call that caused it;
`EXO_VULKAN_TRANSFER=auto|mapped|staging|import` forces a transfer strategy (CI runs the suite under
each on lavapipe). A value either does not know is a `ConfigError` when the backend is created (and
`EXO_VULKAN_TUNE`'s, when it is initialized), so exo never falls back to host memory over a typo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import weakref
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal, TypeVar

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.config import env_choice, env_flag
from exo_gpu_plugins.errors import (
    BackendUnavailableError,
    ConfigError,
    GPUError,
    InteropError,
    OutOfMemoryError,
)
from exo_gpu_plugins.interop import Retained, SharedMemory
from exo_gpu_plugins.models import (
    Capabilities,
    DeviceDescription,
    MemoryReport,
)
from exo_gpu_plugins.sizes import format_bytes
from exo_gpu_plugins.telemetry import HwmonSource, NvmlSource, find_source
from exo_gpu_vulkan.device_info import describe, main_heap, memory_report, strategies
from exo_gpu_vulkan.properties import pci_bus_id_text, uuid_text, vendor_name
from exo_gpu_vulkan.records import DeviceInfoRecord

__all__ = ["VulkanBackend", "probe"]

log = logging.getLogger(__name__)

ENV_VALIDATION = "EXO_VULKAN_VALIDATION"
ENV_TRANSFER = "EXO_VULKAN_TRANSFER"
STRATEGIES = ("auto", "mapped", "staging", "import")

# Up to this many bytes a copy runs inline; above it, in the executor.
INLINE_LIMIT = 1 << 20
# Allocations this large are zero-filled in the executor.
INLINE_ALLOCATION_LIMIT = 16 << 20
# Device-to-device copies on a discrete GPU run on the GPU at over 1 TB/s (1 GiB in about 0.8 ms on
# an H100): the loop waits at most that long, less than an executor hop costs in total for the many
# small copies, so they stay inline up to this size.
INLINE_DEVICE_COPY_LIMIT = 1 << 30

T = TypeVar("T")

_NVIDIA = 0x10DE


def probe() -> str | None:
    """`None` when a Vulkan device is usable here, else the reason (for automatic selection)."""
    try:
        from exo_gpu_vulkan._native import Engine
    except ImportError as exc:
        return f"the native engine failed to import: {exc}"
    reason: str | None = Engine.probe()
    return reason


# Every open VulkanBackend of this process: on drivers without VK_EXT_memory_budget the report's
# "used" is what all of them hold on a device (the driver's usage figure is per process too). It is
# summed when a report is asked for, so allocate and free pay nothing for it.
_open_backends: weakref.WeakSet[VulkanBackend] = weakref.WeakSet()


def _process_usage(device_key: str) -> int:
    total = 0
    for backend in list(_open_backends):
        engine = backend._engine
        for index, key in enumerate(backend._usage_keys):
            # A backend closed by another thread meanwhile holds nothing: skip its error.
            with contextlib.suppress(GPUError):
                if key == device_key and engine is not None:
                    total += int(engine.stats(index)["live_bytes"])
    return total


# The native side of an allocation: (engine allocation id, device index). A plain tuple, since
# one is built per allocate and read on every copy.
_Allocation = tuple[int, int]


class _Registration:
    """The native side of a registered host buffer: the engine's registration id."""

    __slots__ = ("id",)

    def __init__(self, registration: int) -> None:
        self.id = registration


class VulkanBackend(GPUBackend[_Allocation]):
    """Every Vulkan physical device as `vulkan:<index>`."""

    name: ClassVar[str] = "vulkan"

    def __init__(self, *, validation: bool | None = None, strategy: str | None = None) -> None:
        super().__init__()
        self.validation = env_flag(ENV_VALIDATION) if validation is None else validation
        if strategy is None:
            self.strategy = env_choice(ENV_TRANSFER, STRATEGIES, "auto")
        elif strategy.strip().lower() in STRATEGIES:
            self.strategy = strategy.strip().lower()
        else:
            raise ConfigError(f"transfer strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
        self._engine: Any = None
        self._infos: list[DeviceInfoRecord] = []
        self._usage_keys: list[str] = []
        self._copy_limits: list[int] = []
        self._telemetry: list[NvmlSource | HwmonSource | None] = []
        # Devices this backend has used: the first call on a device opens it (tens of ms to
        # seconds), so it never runs on the loop thread.
        self._opened: set[int] = set()
        # Export kinds per device: facts of the device and driver, found on first ask.
        self._kinds: dict[int, tuple[Literal["cpu", "fd", "cuda"], ...]] = {}

    # ----------------------------------------------------------------------------------------------
    # Lifecycle and devices

    def _open(self) -> None:
        try:
            from exo_gpu_vulkan._native import Engine
        except ImportError as exc:
            raise BackendUnavailableError(f"the Vulkan engine failed to import: {exc}") from exc
        engine = Engine(validation=self.validation, strategy=self.strategy)
        count = engine.device_count()
        if count == 0:
            engine.close()
            raise BackendUnavailableError("Vulkan loaded, but it lists no physical device")
        self._engine = engine
        self._infos = [engine.device_info(i) for i in range(count)]
        self._usage_keys = [self._usage_key(i) for i in range(count)]
        self._copy_limits = [
            INLINE_DEVICE_COPY_LIMIT if info["device_type"] == "discrete" else INLINE_LIMIT
            for info in self._infos
        ]
        self._telemetry = [self._find_telemetry(info) for info in self._infos]
        _open_backends.add(self)

    def _close(self) -> None:
        _open_backends.discard(self)
        self._opened.clear()
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()

    @staticmethod
    def _find_telemetry(info: DeviceInfoRecord) -> NvmlSource | HwmonSource | None:
        vendor_id = int(info["vendor_id"])
        return find_source(
            uuid_text(bytes(info["device_uuid"]), vendor_id),
            pci_bus_id_text(info.get("pci_address")),
            vendor_name(vendor_id),
        )

    def _discover_devices(self) -> Sequence[DeviceDescription]:
        return [describe(info, self._telemetry[i]) for i, info in enumerate(self._infos)]

    def _capabilities(self, index: int) -> Capabilities:
        info = self._infos[index]
        telemetry = self._telemetry[index]
        # maxBufferSize when the driver states it: maxMemoryAllocationSize is advice (the engine
        # attempts larger allocations and lets the driver refuse them).
        limit = info.get("max_buffer_size") or info.get("max_memory_allocation_size")
        stats = self._engine.stats(index)
        strategy = str(stats["strategy"])
        return Capabilities(
            device_id=f"{self.name}:{index}",
            max_allocation_bytes=min(int(limit), main_heap(info)[0]) if limit else None,
            allocation_granularity_bytes=64 << 20,
            host_visible_memory=bool(info.get("host_visible_device_local")),
            unified_memory=str(info["device_type"]) in {"integrated", "cpu"},
            # Copies between devices go "p2p" (device groups; not taken yet), "host-import" (one
            # host ring imported into both devices) or "host-staging": engine_stats() says which.
            peer_to_peer=stats.get("cross_device_path") == "p2p",
            cross_device_copy=True,
            memory_budget=bool(info.get("memory_budget")),
            available_tracks_allocations=True,  # the driver's budget, or our own accounting
            temperature=bool(telemetry and telemetry.has_temperature),
            power=bool(telemetry and telemetry.has_power),
            clock_rate=bool(telemetry and telemetry.has_clock),
            utilization=bool(telemetry and telemetry.has_utilization),
            # Engine-allocated host-visible memory the device reads and writes by DMA.
            pinned_host_memory=True,
            # Registration imports the caller's pages (VK_EXT_external_memory_host).
            host_registration=bool(info.get("external_memory_host")),
            # Parallel preads straight into the upload ring (or the mapping), beside the DMA.
            native_file_copy=os.name == "posix",
            transfer_strategy=strategy,
            transfer_strategies=strategies(info),
            export_kinds=self._export_kinds(index),
        )

    def _export_kinds(self, index: int) -> tuple[Literal["cpu", "fd", "cuda"], ...]:
        """'cpu' where every allocation is host-visible memory; 'fd' where the driver exports
        and imports opaque fds; 'cuda' where, besides, a CUDA device has this device's UUID."""
        found = self._kinds.get(index)
        if found is not None:
            return found
        info = self._infos[index]
        kinds: list[Literal["cpu", "fd", "cuda"]] = []
        if self._engine.allocations_host_mapped(index):
            kinds.append("cpu")
        if info.get("opaque_fd") and os.name == "posix":
            kinds.append("fd")
            if int(info["vendor_id"]) == _NVIDIA:
                from exo_gpu_plugins.interop.cuda import cuda_ordinal

                if cuda_ordinal(bytes(info["device_uuid"])) is not None:
                    kinds.append("cuda")
        self._kinds[index] = tuple(kinds)
        return self._kinds[index]

    def _memory_report(self, index: int) -> MemoryReport:
        return memory_report(
            f"{self.name}:{index}",
            self._engine.memory_heaps(index),
            main_heap(self._infos[index])[1],
            _process_usage(self._usage_key(index)),
        )

    def _usage_key(self, index: int) -> str:
        info = self._infos[index]
        return bytes(info["device_uuid"]).hex() or f"index-{index}"

    def _temperature(self, index: int) -> float | None:
        source = self._telemetry[index]
        return source.temperature_c() if source else None

    def _power(self, index: int) -> float | None:
        source = self._telemetry[index]
        return source.power_w() if source else None

    def _clock_rate(self, index: int) -> int | None:
        source = self._telemetry[index]
        return source.clock_mhz() if source else None

    def _utilization(self, index: int) -> float | None:
        source = self._telemetry[index]
        return source.utilization_percent() if source else None

    # ----------------------------------------------------------------------------------------------
    # Memory

    @staticmethod
    async def _offload(call: Callable[..., T], *args: Any) -> T:
        """Run a large engine call in the loop's executor (the engine releases the GIL)."""
        return await asyncio.get_running_loop().run_in_executor(None, call, *args)

    # Each hook calls the engine directly when the operation is small (no thread hop, no extra
    # coroutine) and offloads it when it is large, or when it is the first on its device.

    def _inline(self, index: int, small: bool) -> bool:
        """Whether a call may run on the loop thread: small, on a device already opened."""
        return small and index in self._opened

    async def _offload_opening(self, index: int, call: Callable[..., T], *args: Any) -> T:
        """`_offload` for a call that may be the first on device `index` (it then creates the
        device: seconds); once it returned, small calls on the device run inline."""
        result = await self._offload(call, *args)
        self._opened.add(index)
        return result

    async def _allocate(self, index: int, size: int, zeroed: bool) -> _Allocation:
        try:
            if self._inline(index, size <= INLINE_ALLOCATION_LIMIT):
                return (self._engine.allocate(index, size, zeroed), index)
            alloc = await self._offload_opening(index, self._engine.allocate, index, size, zeroed)
        except OutOfMemoryError as exc:
            raise _out_of_memory(self._infos[index], index, size, exc) from exc
        return (alloc, index)

    async def _allocate_exportable(self, index: int, size: int, zeroed: bool) -> _Allocation:
        # Its own memory object (vkAllocateMemory): never on the loop thread.
        try:
            alloc = await self._offload_opening(index, self._engine.allocate, index, size, zeroed, True)
        except OutOfMemoryError as exc:
            raise _out_of_memory(self._infos[index], index, size, exc) from exc
        return (alloc, index)

    def _export_fd(self, native: _Allocation) -> SharedMemory:
        fd, size, allocation_size, memory_type, memory_flags = self._engine.export_fd(native[0])
        info = self._infos[native[1]]
        try:
            return SharedMemory(
                fd=fd,
                backend=self.name,
                handle_type="opaque-fd",
                size_bytes=size,
                allocation_bytes=allocation_size,
                device_uuid=bytes(info["device_uuid"]).hex(),
                driver_uuid=bytes(info["driver_uuid"]).hex(),
                memory_type=memory_type,
                memory_flags=memory_flags,
            )
        except BaseException:
            os.close(fd)
            raise

    async def _import_fd(self, index: int, shared: SharedMemory) -> _Allocation:
        info = self._infos[index]
        if shared.handle_type != "opaque-fd":
            raise InteropError(
                f"vulkan:{index} opens memory shared as opaque-fd, not {shared.handle_type}"
            )
        for field, ours in (("device", info["device_uuid"]), ("driver", info["driver_uuid"])):
            theirs = getattr(shared, f"{field}_uuid")
            if theirs != bytes(ours).hex():
                raise InteropError(
                    f"the memory was shared from a {field} with UUID {theirs}, but vulkan:{index} "
                    f"has {field} UUID {bytes(ours).hex()}: open it on the device it came from"
                )
        if shared.memory_type is None or shared.memory_flags is None:
            raise InteropError("shared Vulkan memory must say its memory type and flags")
        alloc = await self._offload_opening(
            index,
            self._engine.import_fd,
            index,
            shared.fd,
            shared.size_bytes,
            shared.allocation_bytes,
            shared.memory_type,
            shared.memory_flags,
        )
        return (alloc, index)

    def _retain(self, native: _Allocation) -> Retained:
        held = self._engine.retain(native[0])
        return Retained(owner=held, host_address=held.host_address, size_bytes=int(held.size))

    def _free(self, native: _Allocation) -> None:
        self._engine.free(native[0])

    async def _write(self, native: _Allocation, offset: int, data: memoryview) -> None:
        if data.nbytes <= INLINE_LIMIT:
            self._engine.write(native[0], offset, data)
        else:
            await self._offload(self._engine.write, native[0], offset, data)

    async def _read_into(self, native: _Allocation, offset: int, out: memoryview) -> None:
        if out.nbytes <= INLINE_LIMIT:
            self._engine.read_into(native[0], offset, out)
        else:
            await self._offload(self._engine.read_into, native[0], offset, out)

    async def _read(self, native: _Allocation, offset: int, size: int) -> bytes:
        data: bytes
        if size <= INLINE_LIMIT:
            data = self._engine.read(native[0], offset, size)
        else:
            data = await self._offload(self._engine.read, native[0], offset, size)
        return data

    async def _copy(
        self, src: _Allocation, src_offset: int, dst: _Allocation, dst_offset: int, size: int
    ) -> None:
        # Inline only when both live on one device: a cross-device copy bounces through the host.
        limit = self._copy_limits[src[1]] if src[1] == dst[1] else INLINE_LIMIT
        if size <= limit:
            self._engine.copy(src[0], src_offset, dst[0], dst_offset, size)
        else:
            await self._offload(self._engine.copy, src[0], src_offset, dst[0], dst_offset, size)

    async def _synchronize(self, index: int) -> None:
        await self._offload(self._engine.synchronize, index)

    # ----------------------------------------------------------------------------------------------
    # Host memory and files

    async def _allocate_host(self, index: int, size: int) -> tuple[memoryview, object | None]:
        # Host-visible device memory (zeroed by the engine); its view keeps it alive.
        if self._inline(index, size <= INLINE_ALLOCATION_LIMIT):
            memory = self._engine.host_alloc(index, size)
        else:
            memory = await self._offload_opening(index, self._engine.host_alloc, index, size)
        view: memoryview = memory.view()
        return view, memory

    async def _register_host(self, index: int, view: memoryview) -> object | None:
        if not self._infos[index].get("external_memory_host"):
            return None
        try:
            if self._inline(index, view.nbytes <= INLINE_LIMIT):
                registration: int = self._engine.host_register(index, view)
            else:
                registration = await self._offload_opening(
                    index, self._engine.host_register, index, view
                )
        except BackendUnavailableError as exc:
            # The driver refused to import these pages (e.g. read-only or file-backed memory):
            # copies from the buffer take the ordinary path. A lost device (GPUError) or exhausted
            # memory (OutOfMemoryError) raises.
            log.debug("vulkan:%d: registration refused, buffer stays pageable: %s", index, exc)
            return None
        except ValueError as exc:
            # It overlaps a buffer registered (or allocated) already for this device: that one
            # stays in effect.
            log.debug("vulkan:%d: registration overlaps another, buffer stays pageable: %s", index, exc)
            return None
        return _Registration(registration)

    def _release_host(self, native: object | None) -> None:
        from exo_gpu_vulkan._native import HostMemory

        if isinstance(native, _Registration):
            if self._engine is not None:
                self._engine.host_unregister(native.id)
        elif isinstance(native, HostMemory):
            native.release()  # its memory lives on while views of it exist

    async def _write_from_file(
        self, native: _Allocation, offset: int, fd: int, file_offset: int, size: int
    ) -> None:
        await self._offload(self._engine.write_from_file, native[0], offset, fd, file_offset, size)

    def _read_file_into(self, fd: int, file_offset: int, out: memoryview) -> None:
        # The engine's parallel preads (GIL released): the rate of its own loads.
        self._engine.read_file_into(fd, file_offset, out)

    def engine_stats(self, device_id: str) -> dict[str, Any]:
        """The engine's own counters for a device (live allocations, allocator blocks, strategy)."""
        stats: dict[str, Any] = self._engine.stats(self._device_index(device_id))
        return stats


def _out_of_memory(info: DeviceInfoRecord, index: int, size: int, exc: Exception) -> OutOfMemoryError:
    """The engine's refusal in a person's terms: `3.0 GiB` and `vulkan:0`, not raw bytes and an
    engine index (the engine's own text is kept only where the facts here do not explain it)."""
    largest = max((int(heap["size"]) for heap in info["heaps"]), default=0)
    limit = info.get("max_buffer_size")
    if size > largest:
        reason = f"larger than every memory heap of the device (largest {format_bytes(largest)})"
    elif limit is not None and size > int(limit):
        reason = f"larger than the device's maxBufferSize ({format_bytes(int(limit))})"
    else:
        reason = str(exc).removeprefix("out of memory: ")
    return OutOfMemoryError(f"cannot allocate {format_bytes(size)} on vulkan:{index}: {reason}")
