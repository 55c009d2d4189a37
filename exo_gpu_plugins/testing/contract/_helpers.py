"""Small values and checks the clause modules share (sizes, unknown device ids, memory figures)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.models import GPUDevice

BackendFactory = Callable[[], GPUBackend[Any]]

KiB = 1024
MiB = 1024 * KiB
SIZE = 8 * KiB + 3  # odd on purpose: no backend may assume sizes are multiples of anything


def deferred(function: Callable[..., object], *args: object) -> Callable[[], object]:
    """A deferred call. Lambdas built in a loop would all see the loop variable's last value."""
    return lambda: function(*args)


def unknown_device_ids(backend: GPUBackend[Any]) -> list[str]:
    """Ids that look like this backend's but name no listed device (near misses on purpose)."""
    listed = {device.device_id for device in backend.list_devices()}
    name = backend.name
    candidates = [
        f"{name}:{len(listed) + 7}",
        f"{name}:-1",
        f"{name}:",
        name,
        "",
        f"{name}:00",
        f" {name}:0",
        f"{name}:0 ",
        f"{name.upper()}:0",
        f"{name}:0:0",
        "no-such-backend:0",
    ]
    return [candidate for candidate in candidates if candidate not in listed]


def described(device: GPUDevice) -> dict[str, Any]:
    """A device's fields except its free memory, which is live (read anew on every call)."""
    return device.model_dump(exclude={"memory_available"})
