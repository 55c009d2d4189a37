"""Pydantic models that cross the backend boundary: devices, handles, memory reports, capabilities.

All are frozen: a handle or a report is a snapshot, and exo may hash them or hold them in sets.
A field a backend cannot know is `None`; no model carries an invented number.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "Capabilities",
    "DeviceType",
    "GPUDevice",
    "HeapReport",
    "MemoryHandle",
    "MemoryReport",
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class DeviceType(str, Enum):
    """What kind of processor holds the memory (Vulkan's VkPhysicalDeviceType, plus host)."""

    DISCRETE = "discrete"
    INTEGRATED = "integrated"
    VIRTUAL = "virtual"
    CPU = "cpu"
    HOST = "host"
    OTHER = "other"


class GPUDevice(BaseModel):
    """One device of one backend. Field names follow exo's fork of the spec, plus identity fields."""

    model_config = _FROZEN

    device_id: str = Field(description="'<backend>:<index>', e.g. 'vulkan:0'")
    name: str
    vendor: str = Field(description="lower-case vendor name: nvidia, amd, intel, apple, mesa, ...")
    backend: str
    device_type: DeviceType
    memory_bytes: int = Field(ge=0, description="total device memory")
    memory_available: int | None = Field(
        default=None, ge=0, description="free memory when the device was described"
    )
    compute_units: int | None = Field(default=None, ge=0)
    compute_capability: str | None = None
    tensor_core_count: int | None = Field(default=None, ge=0)
    max_threads_per_block: int | None = Field(default=None, ge=0)
    clock_rate_mhz: int | None = Field(default=None, ge=0)
    bandwidth_gbps: float | None = Field(default=None, ge=0)
    support_level: str = "full"
    driver_version: str | None = None
    backend_name: str
    uuid: str | None = Field(default=None, description="stable device UUID (NVML format on NVIDIA)")
    pci_bus_id: str | None = Field(default=None, description="'dddd:bb:dd.f'")
    api_version: str | None = None


class MemoryHandle(BaseModel):
    """An allocation on a device. `handle_id` holds 128 random bits, so it cannot be guessed."""

    model_config = _FROZEN

    handle_id: str = Field(min_length=1)
    device_id: str
    size_bytes: int = Field(gt=0)
    allocated_at: datetime


class HeapReport(BaseModel):
    """One memory heap of a device, with the same meaning of the four figures as `MemoryReport`."""

    model_config = _FROZEN

    index: int = Field(ge=0)
    device_local: bool
    total_bytes: int = Field(ge=0)
    used_bytes: int = Field(ge=0)
    available_bytes: int = Field(ge=0)
    reserved_bytes: int = Field(ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> HeapReport:
        _check_parts(self.total_bytes, self.used_bytes, self.available_bytes, self.reserved_bytes)
        return self


class MemoryReport(BaseModel):
    """Device memory right now.

    - `total_bytes`: the device's memory (its device-local heaps);
    - `used_bytes`: what this process holds there;
    - `available_bytes`: what a new allocation can still get;
    - `reserved_bytes`: the rest, held by other processes, the driver and the OS.
    The four always add up: total = used + available + reserved. `source` names where the figures
    came from (e.g. `VK_EXT_memory_budget`, `heap-size-minus-own`, `os`).
    It also answers `report["total_bytes"]`, as the dict of exo's fork did.
    """

    model_config = _FROZEN

    device_id: str
    total_bytes: int = Field(ge=0)
    used_bytes: int = Field(ge=0)
    available_bytes: int = Field(ge=0)
    reserved_bytes: int = Field(ge=0)
    source: str = Field(min_length=1)
    heaps: tuple[HeapReport, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> MemoryReport:
        _check_parts(self.total_bytes, self.used_bytes, self.available_bytes, self.reserved_bytes)
        return self

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> list[str]:
        """The field names, so `dict(report)`-style code written for the fork's dict keeps working."""
        return list(type(self).model_fields)


def _check_parts(total: int, used: int, available: int, reserved: int) -> None:
    if used > total or available > total:
        raise ValueError(
            f"impossible memory report: used={used} available={available} exceed total={total}"
        )
    if used + available + reserved != total:
        raise ValueError(
            "impossible memory report: used + available + reserved "
            f"= {used + available + reserved} != total = {total}"
        )


class Capabilities(BaseModel):
    """What a backend can do on one device. The conformance kit skips by these, never by name."""

    model_config = _FROZEN

    device_id: str
    max_allocation_bytes: int | None = Field(
        default=None, gt=0, description="largest single allocation, when the driver says"
    )
    allocation_granularity_bytes: int = Field(
        default=1,
        gt=0,
        description="the allocator's block size: freeing may leave used memory this far above start",
    )
    host_visible_memory: bool = Field(description="device memory can be mapped by the CPU")
    unified_memory: bool = Field(description="device memory is host memory (UMA, CPU devices)")
    peer_to_peer: bool = Field(default=False, description="direct copies between two devices")
    cross_device_copy: bool = Field(
        default=True, description="copy_device_to_device works across devices of this backend"
    )
    memory_budget: bool = Field(description="memory figures come from the driver, live")
    available_tracks_allocations: bool = Field(
        default=False,
        description="available_bytes falls by what this process allocates (driver budget or the "
        "backend's own accounting), rather than being an OS estimate that lags",
    )
    temperature: bool = False
    power: bool = False
    clock_rate: bool = False
    transfer_strategy: str | None = Field(
        default=None, description="how host<->device copies are carried out on this device"
    )
    transfer_strategies: tuple[str, ...] = ()
