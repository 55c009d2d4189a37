"""Pydantic models that cross the backend boundary: devices, handles, memory reports, capabilities.

All are frozen: a handle or a report is a snapshot, and exo may hash them or hold them in sets.
A field a backend cannot know is `None`; no model carries an invented number.
"""

from __future__ import annotations

import uuid
from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "Capabilities",
    "DeviceDescription",
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


class DeviceDescription(BaseModel):
    """What only a backend knows about one of its devices, returned by `_discover_devices()`.

    The core adds what it knows itself (the id, the backend's name, the live free memory) to make
    the `GPUDevice` that callers see. `field_sources` says where a figure came from, as pairs
    (field name, source) such as ("compute_capability", "nvml"); `exo-gpu info` shows them.
    """

    model_config = _FROZEN

    name: str
    vendor: str = Field(description="lower-case vendor name: nvidia, amd, intel, apple, mesa, ...")
    device_type: DeviceType = DeviceType.OTHER
    memory_bytes: int = Field(ge=0, description="total device memory")
    compute_units: int | None = Field(default=None, ge=0)
    compute_capability: str | None = None
    tensor_core_count: int | None = Field(default=None, ge=0)
    max_threads_per_block: int | None = Field(default=None, ge=0)
    clock_rate_mhz: int | None = Field(default=None, ge=0, description="maximum graphics/SM clock")
    memory_clock_mhz: int | None = Field(default=None, ge=0, description="maximum memory clock")
    memory_bus_width_bits: int | None = Field(default=None, ge=0)
    bandwidth_gbps: float | None = Field(default=None, ge=0, description="peak memory bandwidth")
    support_level: str = "full"
    driver_version: str | None = None
    uuid: str | None = Field(default=None, description="stable device UUID (NVML format on NVIDIA)")
    pci_bus_id: str | None = Field(default=None, description="'dddd:bb:dd.f'")
    api_version: str | None = None
    field_sources: tuple[tuple[str, str], ...] = ()


# The order of the fields of exo's fork's `GPUDevice` dataclass, so its positional calls work too.
_FORK_DEVICE_FIELDS = (
    "device_id",
    "name",
    "vendor",
    "backend",
    "compute_capability",
    "memory_bytes",
    "memory_available",
    "compute_units",
    "tensor_core_count",
    "max_threads_per_block",
    "clock_rate_mhz",
    "bandwidth_gbps",
    "support_level",
    "driver_version",
    "backend_name",
)


class _DeviceIdentity(BaseModel):
    """What the core knows of a device: its id, its backend, its free memory."""

    model_config = _FROZEN

    device_id: str = Field(description="'<backend>:<index>', e.g. 'vulkan:0'")
    backend: str
    backend_name: str
    memory_available: int | None = Field(
        default=None, ge=0, description="free memory when this description was made"
    )


class GPUDevice(DeviceDescription, _DeviceIdentity):
    """One device of one backend: its description plus what the core knows (id, backend, free memory).

    Every constructor call of exo's fork works unchanged, keyword or positional (in the fork's field
    order); fields the fork did not have take defaults.
    """

    def __init__(self, *args: Any, **data: Any) -> None:
        if args:
            if len(args) > len(_FORK_DEVICE_FIELDS):
                raise TypeError(
                    f"GPUDevice takes at most {len(_FORK_DEVICE_FIELDS)} positional arguments"
                )
            for name, value in zip(_FORK_DEVICE_FIELDS, args, strict=False):
                if name in data:
                    raise TypeError(f"GPUDevice got multiple values for argument {name!r}")
                data[name] = value
        super().__init__(**data)

    @classmethod
    def from_description(
        cls,
        description: DeviceDescription,
        *,
        device_id: str,
        backend: str,
        memory_available: int | None,
    ) -> GPUDevice:
        """The device as callers see it: the backend's description plus the core's own figures."""
        fields = dict(description.__dict__)
        fields.update(
            device_id=device_id,
            backend=backend,
            backend_name=backend,
            memory_available=memory_available,
        )
        return cls.model_construct(**fields)


class MemoryHandle(BaseModel):
    """An allocation on a device. `handle_id` holds 128 random bits, so it cannot be guessed.

    `MemoryHandle(device_id=..., size_bytes=...)` works as in exo's fork (a fresh id and the current
    time), but only handles a backend gave out are accepted by it: a hand-made one is refused.
    """

    model_config = _FROZEN

    handle_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1)
    device_id: str
    size_bytes: int = Field(gt=0)
    allocated_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))


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
    - `reserved_bytes`: the rest, held by other processes, the driver and the OS (and, where
      the driver reports no per-process usage, this process's staging, pools and rounding).
    The four always add up: total = used + available + reserved. `source` names where the figures
    came from (e.g. `VK_EXT_memory_budget`, `heap-size-minus-own`, `os`).
    It is also a read-only mapping of those four figures, as the dict of exo's fork was.
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

    # A read-only mapping of the four figures, as the dict of exo's fork was: `in`, `get`, `keys`,
    # `items`, iteration, `len`, `dict(report)` and `json.dumps(dict(report))` all work.

    def __getitem__(self, key: str) -> int:
        if key not in MEMORY_FIGURES:
            raise KeyError(key)
        value: int = getattr(self, key)
        return value

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        return iter(MEMORY_FIGURES)

    def __len__(self) -> int:
        return len(MEMORY_FIGURES)

    def __contains__(self, key: object) -> bool:
        return key in MEMORY_FIGURES

    def keys(self) -> KeysView[str]:
        """The four figure names."""
        return KeysView(self)

    def values(self) -> ValuesView[int]:
        """The four figures, in `keys()` order."""
        return ValuesView(self)

    def items(self) -> ItemsView[str, int]:
        """(name, figure) pairs."""
        return ItemsView(self)

    def get(self, key: str, default: Any = None) -> Any:
        """The figure, or `default` for any other key."""
        return self[key] if key in MEMORY_FIGURES else default


MEMORY_FIGURES = ("total_bytes", "used_bytes", "available_bytes", "reserved_bytes")
Mapping.register(MemoryReport)


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
    utilization: bool = Field(default=False, description="get_device_utilization gives readings")
    pinned_host_memory: bool = Field(
        default=False,
        description="allocate_host_buffer gives memory the device reads and writes directly",
    )
    host_registration: bool = Field(
        default=False,
        description="register_host_buffer makes a caller's buffer directly accessible to the device",
    )
    native_file_copy: bool = Field(
        default=False,
        description="copy_file_to_device is carried out by the backend itself, not the core's loop",
    )
    transfer_strategy: str | None = Field(
        default=None, description="how host<->device copies are carried out on this device"
    )
    transfer_strategies: tuple[str, ...] = ()
    export_kinds: tuple[Literal["cpu", "fd", "cuda"], ...] = Field(
        default=(),
        description="how memory leaves the backend: 'cpu' (every allocation viewed in place from "
        "the CPU), 'fd' (exportable allocations shared with other processes), 'cuda' (exportable "
        "allocations viewed as CUDA memory)",
    )
