"""The exception types every backend raises.

They live in the core so that exo can catch one family whatever backend is loaded, and so that
native plugins (the Vulkan engine maps its Rust errors onto these) need no error types of their own.
`GPUError` is a `RuntimeError`, which is what exo's fork of the spec documented; `OutOfBoundsError`
is also a `ValueError`, since an offset past the end is bad input.
"""

from __future__ import annotations

__all__ = [
    "BackendClosedError",
    "BackendUnavailableError",
    "CheckpointError",
    "ConfigError",
    "DeviceLostError",
    "DeviceNotFoundError",
    "FileReadError",
    "GPUError",
    "InteropError",
    "InvalidHandleError",
    "OutOfBoundsError",
    "OutOfMemoryError",
    "PluginError",
    "TransferError",
    "UnknownBackendError",
]


class GPUError(RuntimeError):
    """Base of every error a backend raises for a failed GPU operation."""


class DeviceNotFoundError(GPUError):
    """The device id is malformed or names no device of this backend."""


class DeviceLostError(GPUError):
    """The device was lost (a driver reset, a hang past the wait timeout, a fault): work in flight
    on it may or may not have run, and every later call on it fails at once. Nothing on the device
    is usable again; a new backend instance opens a fresh device."""


class OutOfMemoryError(GPUError):
    """The device (or the host, for staging memory) cannot hold the requested allocation."""


class InvalidHandleError(GPUError):
    """The handle was freed, forged, or belongs to another backend instance."""


class BackendClosedError(GPUError):
    """The backend is not initialized yet, or was shut down."""


class BackendUnavailableError(GPUError):
    """The backend cannot run on this machine (no driver, no loader, no device)."""


class TransferError(GPUError):
    """A copy was accepted but the device failed to carry it out."""


class FileReadError(TransferError):
    """A file could not be read into device memory: an I/O error, a short read, or a file that
    shrank during the copy. What was written before the failure is not rolled back."""


class InteropError(GPUError):
    """Memory cannot be handed to (or taken from) another framework or process this way: the
    device or backend does not offer the export kind, the allocation was not made exportable, the
    consumer's runtime (CUDA, say) is missing, or a shared descriptor does not match the device,
    size or kind it claims. The message says which, and what would work instead."""


class OutOfBoundsError(GPUError, ValueError):
    """An offset/size pair reaches outside the allocation; nothing was written."""


class CheckpointError(GPUError, ValueError):
    """A weights file or checkpoint is malformed (bad header, offsets, dtype, missing shard). The
    message names the file and, where there is one, the tensor. Raised before anything is allocated."""


class PluginError(GPUError):
    """A plugin failed to load or register, or two plugins claim one backend name."""


class UnknownBackendError(PluginError, LookupError):
    """No installed plugin provides a backend of that name; the message lists the choices."""


class ConfigError(GPUError, ValueError):
    """exo's config file cannot be read or its `[gpu]` table is malformed."""
