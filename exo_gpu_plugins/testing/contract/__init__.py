"""The conformance kit: pytest test classes that check a backend against the contract.

A plugin author subclasses `BackendContract` in a test module and says how to make the backend:

    from exo_gpu_plugins.testing import BackendContract

    class TestMyBackend(BackendContract):
        backend_class = MyBackend          # or override make_backend(), or a backend_factory fixture

Every test makes its backends through that one factory (each call must return a NEW, uninitialized
instance), runs them on an event loop of its own, and shuts them down afterwards, so the kit needs no
pytest-asyncio and no test depends on another. Tests are grouped into the contract's clauses
(`CLAUSES`); the smaller mixins (`AllocationContract`, ...) can be used alone. Tests skip only by
what the backend declares (`Capabilities`, the number of devices), never by its name.

Sizes are small (kilobytes, one 64 MiB probe of the memory figures) so that the kit runs in seconds
on a software Vulkan driver.

One module per group of clauses (`lifecycle`, `devices`, `allocation`, `copies`, ...); what they share
lives in `_base` (`KitBase`, `clause`, `assert_bytes_equal`). This package joins them.
"""

from __future__ import annotations

from exo_gpu_plugins.testing.contract._base import (
    CLAUSES,
    KitBase,
    assert_bytes_equal,
    assert_zero_filled,
    clause,
    clause_of,
    is_kit_item,
)
from exo_gpu_plugins.testing.contract._helpers import SIZE, BackendFactory, KiB, MiB
from exo_gpu_plugins.testing.contract.allocation import AllocationContract
from exo_gpu_plugins.testing.contract.concurrency import ConcurrencyContract
from exo_gpu_plugins.testing.contract.copies import CopyContract
from exo_gpu_plugins.testing.contract.device_to_device import DeviceToDeviceContract
from exo_gpu_plugins.testing.contract.devices import DeviceContract
from exo_gpu_plugins.testing.contract.exports import ExportContract
from exo_gpu_plugins.testing.contract.file_copy import FileCopyContract
from exo_gpu_plugins.testing.contract.handles import HandleContract
from exo_gpu_plugins.testing.contract.host_buffers import HostBufferContract
from exo_gpu_plugins.testing.contract.lifecycle import LifecycleContract
from exo_gpu_plugins.testing.contract.memory_report import MemoryReportContract
from exo_gpu_plugins.testing.contract.state_machine import StateMachineContract

__all__ = [
    "CLAUSES",
    "SIZE",
    "AllocationContract",
    "BackendContract",
    "BackendFactory",
    "ConcurrencyContract",
    "CopyContract",
    "DeviceContract",
    "DeviceToDeviceContract",
    "ExportContract",
    "FileCopyContract",
    "HandleContract",
    "HostBufferContract",
    "KiB",
    "KitBase",
    "LifecycleContract",
    "MemoryReportContract",
    "MiB",
    "StateMachineContract",
    "assert_bytes_equal",
    "assert_zero_filled",
    "clause",
    "clause_of",
    "is_kit_item",
]


class BackendContract(
    # pytest collects inherited tests in reverse MRO order: listed last-to-first here, they run
    # first-to-last (cheap lifecycle checks first, the state machine last).
    StateMachineContract,
    ConcurrencyContract,
    ExportContract,
    MemoryReportContract,
    HandleContract,
    DeviceToDeviceContract,
    FileCopyContract,
    HostBufferContract,
    CopyContract,
    AllocationContract,
    DeviceContract,
    LifecycleContract,
):
    """The whole contract. Subclass it as `Test...` and set `backend_class` (see `KitBase`)."""
