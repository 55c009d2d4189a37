"""exo-gpu-plugins: GPU memory backends for exo behind one async spec.

    backend = await exo_gpu_plugins.open_backend()   # by name, EXO_GPU_BACKEND, config, or auto
    handle = await backend.allocate("vulkan:0", 1 << 20)

See docs/ for the contract, plugin authoring and the CLI.
"""

from __future__ import annotations

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import (
    BackendClosedError,
    BackendUnavailableError,
    ConfigError,
    DeviceNotFoundError,
    GPUError,
    InvalidHandleError,
    OutOfBoundsError,
    OutOfMemoryError,
    PluginError,
    TransferError,
    UnknownBackendError,
)
from exo_gpu_plugins.hookspecs import BackendInfo, hookimpl
from exo_gpu_plugins.models import (
    Capabilities,
    DeviceType,
    GPUDevice,
    HeapReport,
    MemoryHandle,
    MemoryReport,
)
from exo_gpu_plugins.registry import Registry, get_registry, open_backend

__version__ = "0.1.0"

__all__ = [
    "BackendClosedError",
    "BackendInfo",
    "BackendUnavailableError",
    "Capabilities",
    "ConfigError",
    "DeviceNotFoundError",
    "DeviceType",
    "GPUBackend",
    "GPUDevice",
    "GPUError",
    "HeapReport",
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
