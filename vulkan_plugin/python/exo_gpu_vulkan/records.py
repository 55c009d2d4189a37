"""The records the native engine returns (`exo_gpu_vulkan._native`), as TypedDicts: what
`Engine.device_info`, `Engine.memory_heaps` and `Engine.stats` give back, key for key (built in
rust/python/src/records.rs; keep the two in step).

Plain dicts at run time (one is built per call, some on every allocation), typed for mypy."""

from __future__ import annotations

from typing import Literal, TypedDict

__all__ = [
    "DeviceInfoRecord",
    "HeapRecord",
    "HeapUsageRecord",
    "MemoryTypeRecord",
    "StatsRecord",
]


class HeapRecord(TypedDict):
    """One memory heap as the device describes it (`DeviceInfoRecord.heaps`)."""

    index: int
    size: int
    device_local: bool


class MemoryTypeRecord(TypedDict):
    """One memory type: raw VkMemoryPropertyFlags, its heap, and the four flags spelt out."""

    index: int
    flags: int
    heap: int
    device_local: bool
    host_visible: bool
    host_coherent: bool
    host_cached: bool


class DeviceInfoRecord(TypedDict):
    """`Engine.device_info`: static facts of one physical device (no logical device needed)."""

    index: int
    name: str
    vendor_id: int
    device_id: int
    device_type: Literal["discrete", "integrated", "virtual", "cpu", "other"]
    driver_version: int
    api_version: int
    driver_name: str | None
    driver_info: str | None
    device_uuid: bytes
    driver_uuid: bytes
    opaque_fd: bool
    pci_address: tuple[int, int, int, int] | None
    compute_units: int | None
    max_compute_work_group_invocations: int
    max_memory_allocation_size: int
    max_buffer_size: int | None
    heaps: list[HeapRecord]
    memory_types: list[MemoryTypeRecord]
    memory_budget: bool
    pci_bus_info: bool
    external_memory_host: bool
    min_imported_host_pointer_alignment: int | None
    transfer_queue_family: int
    transfer_only: bool
    transfer_queue_count: int
    host_visible_device_local: bool
    strategy: Literal["mapped", "staging", "import"] | None
    device_group: list[int]
    device_group_subset_allocation: bool


class HeapUsageRecord(TypedDict):
    """`Engine.memory_heaps`: one heap's size, the driver's budget and usage where
    VK_EXT_memory_budget gives them, and the bytes this engine and the whole process hold there."""

    index: int
    size: int
    device_local: bool
    budget: int | None
    usage: int | None
    engine_allocated: int
    process_allocated: int


class StatsRecord(TypedDict):
    """`Engine.stats`: one device's counters (this engine's, and the shared device's allocator)."""

    strategy: Literal["mapped", "staging", "import", "unavailable"]
    device_created: int
    live_allocations: int
    live_bytes: int
    block_count: int
    allocator_capacity_bytes: int
    allocator_allocated_bytes: int
    mapped_bytes: int
    staged_bytes: int
    imported_bytes: int
    import_refused: int
    compute_copied_bytes: int
    cross_device_path: Literal["p2p", "host-import", "host-staging"]
    cross_device_bytes: int
    pinned_bytes: int
    direct_read_bytes: int
