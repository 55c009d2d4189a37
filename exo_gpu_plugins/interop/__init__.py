"""Memory used in place: DLPack views for torch, CuPy, numpy and JAX (`TensorView`), shared
memory between processes (`SharedMemory`, `send_shared`, `receive_shared`), and the CUDA
import behind `kDLCUDA` views. docs/interop.md says how to use them and the rules they keep."""

from __future__ import annotations

from exo_gpu_plugins.errors import InteropError
from exo_gpu_plugins.interop.dlpack import (
    DLPACK_DTYPES,
    DeviceKind,
    TensorView,
    live_exports,
    read_dlpack_bytes,
)
from exo_gpu_plugins.interop.memory import Retained
from exo_gpu_plugins.interop.sharing import SharedMemory, receive_shared, send_shared
from exo_gpu_plugins.interop.views import TensorRequest

__all__ = [
    "DLPACK_DTYPES",
    "EXPORT_KINDS",
    "DeviceKind",
    "InteropError",
    "Retained",
    "SharedMemory",
    "TensorRequest",
    "TensorView",
    "live_exports",
    "read_dlpack_bytes",
    "receive_shared",
    "send_shared",
]

# What a backend may declare in `Capabilities.export_kinds`:
#   "cpu"  - export_tensor(device="cpu") works for every allocation (host-visible memory);
#   "fd"   - allocations made with exportable=True can be shared with another process
#            (export_memory / import_memory);
#   "cuda" - those allocations can also be viewed as CUDA memory (export_tensor(device="cuda")).
EXPORT_KINDS = ("cpu", "fd", "cuda")
