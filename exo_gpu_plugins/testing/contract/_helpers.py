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


def plain_int(value: object) -> bool:
    """An int that is not a bool (True is an int to Python, never a byte count to the contract)."""
    return isinstance(value, int) and not isinstance(value, bool)


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


def check_figures(what: str, total: object, used: object, available: object, reserved: object) -> None:
    """Plain non-negative ints that add up: used + available + reserved == total."""
    figures = {"total": total, "used": used, "available": available, "reserved": reserved}
    for name, value in figures.items():
        assert plain_int(value), f"{what}: {name}_bytes is {value!r}, not an int"
        assert value >= 0, f"{what}: {name}_bytes is negative ({value})"  # type: ignore[operator]
    t, u, a, r = (int(v) for v in figures.values())  # type: ignore[call-overload]
    assert u <= t, f"{what}: used_bytes {u} > total_bytes {t}"
    assert a <= t, f"{what}: available_bytes {a} > total_bytes {t}"
    assert u + a + r == t, f"{what}: used {u} + available {a} + reserved {r} != total {t}"


def described(device: GPUDevice) -> dict[str, Any]:
    """A device's fields except its free memory, which is live (read anew on every call)."""
    return device.model_dump(exclude={"memory_available"})
