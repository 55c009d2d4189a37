"""exo-gpu-plugins' conformance kit: prove that a backend keeps the contract.

    from exo_gpu_plugins.testing import BackendContract

    class TestMyBackend(BackendContract):
        backend_class = MyBackend

Also: `pytest --exo-gpu-backend NAME` (the kit against an installed backend), `exo-gpu check NAME`
(`run_check`), and the Hypothesis state machine (`make_state_machine`, `run_state_machine`).

Names are imported on first use: pytest loads this package's plugin in every run, and that must not
import pytest-heavy modules or Hypothesis for projects that never use the kit.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exo_gpu_plugins.testing.check import CheckReport, KitResult, run_check, run_kit
    from exo_gpu_plugins.testing.contract import (
        CLAUSES,
        AllocationContract,
        BackendContract,
        ConcurrencyContract,
        CopyContract,
        DeviceContract,
        DeviceToDeviceContract,
        FileCopyContract,
        HandleContract,
        HostBufferContract,
        KitBase,
        LifecycleContract,
        MemoryReportContract,
        StateMachineContract,
        assert_bytes_equal,
        assert_zero_filled,
    )
    from exo_gpu_plugins.testing.expected_failures import load_expected_failures
    from exo_gpu_plugins.testing.state_machine import (
        BackendStateMachine,
        kit_settings,
        make_state_machine,
        run_state_machine,
    )

__all__ = [
    "CLAUSES",
    "AllocationContract",
    "BackendContract",
    "BackendStateMachine",
    "CheckReport",
    "ConcurrencyContract",
    "CopyContract",
    "DeviceContract",
    "DeviceToDeviceContract",
    "FileCopyContract",
    "HandleContract",
    "HostBufferContract",
    "KitBase",
    "KitResult",
    "LifecycleContract",
    "MemoryReportContract",
    "StateMachineContract",
    "assert_bytes_equal",
    "assert_zero_filled",
    "kit_settings",
    "load_expected_failures",
    "make_state_machine",
    "run_check",
    "run_kit",
    "run_state_machine",
]

_HOME = {
    "CheckReport": "check",
    "KitResult": "check",
    "run_check": "check",
    "run_kit": "check",
    "load_expected_failures": "expected_failures",
    "BackendStateMachine": "state_machine",
    "kit_settings": "state_machine",
    "make_state_machine": "state_machine",
    "run_state_machine": "state_machine",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_HOME.get(name, 'contract')}")
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
