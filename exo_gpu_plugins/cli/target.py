"""Which backend and device a command's arguments name, and opening that backend.

A device id implies its backend (`--device host:0` needs no `--backend host`); names are compared
case-insensitively; and every error says where the name came from (`--backend`, the device id,
`EXO_GPU_BACKEND`, the config file), never `chosen by argument` for something the user did not type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from exo_gpu_plugins.errors import BackendUnavailableError, DeviceNotFoundError
from exo_gpu_plugins.registry import get_registry, open_backend

if TYPE_CHECKING:
    from exo_gpu_plugins.backend import GPUBackend

__all__ = ["Target", "device_id", "open_target", "resolve"]


def device_id(text: str) -> str:
    """`Vulkan:0` -> `vulkan:0`; a malformed id is a `DeviceNotFoundError` showing the form."""
    name, sep, index = text.strip().partition(":")
    if not sep or not name or not index.isdigit():
        raise DeviceNotFoundError(
            f"device id {text!r} is not of the form '<backend>:<index>', e.g. host:0"
        )
    return f"{name.lower()}:{int(index)}"


@dataclass(frozen=True)
class Target:
    """A backend name (None: let exo's selection decide) with its source, and a device (None: the
    backend's first)."""

    backend: str | None
    source: str
    device: str | None


def resolve(backend: str | None, device: str | None) -> Target:
    """`--backend` and `--device` as given: the device names its backend unless both are given, and
    then they must agree."""
    chosen = device_id(device) if device is not None else None
    implied = chosen.partition(":")[0] if chosen else None
    if backend is not None:
        name = backend.strip().lower()
        if implied is not None and implied != name:
            raise DeviceNotFoundError(
                f"device {chosen!r} is not a device of backend {name!r} (--backend)"
            )
        return Target(name, "--backend", chosen)
    if implied is not None:
        return Target(implied, f"device id {chosen}", chosen)
    return Target(None, "selection", None)


async def open_target(target: Target) -> GPUBackend[Any]:
    """Initialize the backend the target names; without a name, exo's own selection
    (EXO_GPU_BACKEND, config file, automatic) decides, and its errors name their source."""
    if target.backend is None:
        return await open_backend()
    entry = get_registry().entry(target.backend, target.source)
    reason = entry.unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(
            f"backend {entry.name!r} (from {target.source}) cannot run here: {reason}"
        )
    backend = entry.load_class()()
    await backend.initialize()
    if target.device is not None and backend.get_device(target.device) is None:
        listed = ", ".join(d.device_id for d in backend.list_devices()) or "none"
        await backend.shutdown()
        raise DeviceNotFoundError(f"no device {target.device!r}; devices of {entry.name}: {listed}")
    return backend


def first_device(backend: GPUBackend[Any], target: Target) -> str:
    """The device the target names, else the backend's first."""
    if target.device is not None:
        return target.device
    devices = backend.list_devices()
    if not devices:
        raise DeviceNotFoundError(f"backend {backend.name!r} lists no device")
    return devices[0].device_id
