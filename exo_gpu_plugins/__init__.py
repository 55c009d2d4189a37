"""exo-gpu-plugins: GPU memory backends for exo behind one async spec.

    backend = await exo_gpu_plugins.open_backend()   # by name, EXO_GPU_BACKEND, config, or auto
    handle = await backend.allocate("vulkan:0", 1 << 20)

See docs/ for the contract, plugin authoring and the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from exo_gpu_plugins.errors import (
    BackendClosedError,
    BackendUnavailableError,
    CheckpointError,
    ConfigError,
    DeviceLostError,
    DeviceNotFoundError,
    FileReadError,
    GPUError,
    InteropError,
    InvalidHandleError,
    OutOfBoundsError,
    OutOfMemoryError,
    PluginError,
    TransferError,
    UnknownBackendError,
)
from exo_gpu_plugins.hookspecs import BackendInfo, hookimpl
from exo_gpu_plugins.registry import Registry, get_registry, open_backend

if TYPE_CHECKING:
    from exo_gpu_plugins.backend import GPUBackend
    from exo_gpu_plugins.host_buffer import HostBuffer
    from exo_gpu_plugins.models import (
        Capabilities,
        DeviceDescription,
        DeviceType,
        GPUDevice,
        HeapReport,
        MemoryHandle,
        MemoryReport,
    )

__version__ = "0.2.0"

# The spec and the pydantic models load on first use: exo's startup pays for discovery only.
_LAZY = {
    "GPUBackend": "exo_gpu_plugins.backend",
    "Capabilities": "exo_gpu_plugins.models",
    "DeviceDescription": "exo_gpu_plugins.models",
    "HostBuffer": "exo_gpu_plugins.host_buffer",
    "DeviceType": "exo_gpu_plugins.models",
    "GPUDevice": "exo_gpu_plugins.models",
    "HeapReport": "exo_gpu_plugins.models",
    "MemoryHandle": "exo_gpu_plugins.models",
    "MemoryReport": "exo_gpu_plugins.models",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'exo_gpu_plugins' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "BackendClosedError",
    "BackendInfo",
    "BackendUnavailableError",
    "Capabilities",
    "CheckpointError",
    "ConfigError",
    "DeviceDescription",
    "DeviceLostError",
    "DeviceNotFoundError",
    "DeviceType",
    "FileReadError",
    "GPUBackend",
    "GPUDevice",
    "GPUError",
    "HeapReport",
    "HostBuffer",
    "InteropError",
    "InvalidHandleError",
    "MemoryHandle",
    "MemoryReport",
    "OutOfBoundsError",
    "OutOfMemoryError",
    "PluginError",
    "Registry",
    "TransferError",
    "UnknownBackendError",
    "__version__",
    "get_registry",
    "hookimpl",
    "open_backend",
]
