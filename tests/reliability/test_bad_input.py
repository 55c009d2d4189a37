"""Bad input, case by case: each call gets its specific exception, and afterwards a canary
allocation still holds its bytes and the backend keeps working."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import (
    BackendClosedError,
    DeviceNotFoundError,
    InvalidHandleError,
    OutOfBoundsError,
    OutOfMemoryError,
)
from exo_gpu_plugins.models import MemoryHandle

SIZE = 8192
CANARY = bytes(range(256)) * 16


@dataclass
class Env:
    backend: GPUBackend[Any]
    device: str
    handle: MemoryHandle
    freed: MemoryHandle
    foreign: MemoryHandle  # live in another instance of the same backend


Call = Callable[[Env], Awaitable[object]]


def forged(env: Env, **changes: object) -> MemoryHandle:
    return env.handle.model_copy(update=changes)


def non_contiguous() -> memoryview:
    return memoryview(bytearray(64))[::2]


CASES: list[tuple[str, Call, type[BaseException]]] = [
    ("allocate device None", lambda e: e.backend.allocate(None, 16), TypeError),  # type: ignore[arg-type]
    ("allocate device int", lambda e: e.backend.allocate(0, 16), TypeError),  # type: ignore[arg-type]
    ("allocate device malformed", lambda e: e.backend.allocate(e.backend.name, 16), DeviceNotFoundError),
    ("allocate device empty", lambda e: e.backend.allocate("", 16), DeviceNotFoundError),
    (
        "allocate device unknown index",
        lambda e: e.backend.allocate(f"{e.backend.name}:99", 16),
        DeviceNotFoundError,
    ),
    (
        "allocate device negative index",
        lambda e: e.backend.allocate(f"{e.backend.name}:-1", 16),
        DeviceNotFoundError,
    ),
    ("allocate other backend's id", lambda e: e.backend.allocate("cuda:0", 16), DeviceNotFoundError),
    ("allocate size str", lambda e: e.backend.allocate(e.device, "16"), TypeError),  # type: ignore[arg-type]
    ("allocate size float", lambda e: e.backend.allocate(e.device, 16.0), TypeError),  # type: ignore[arg-type]
    ("allocate size bool", lambda e: e.backend.allocate(e.device, True), TypeError),
    ("allocate size None", lambda e: e.backend.allocate(e.device, None), TypeError),  # type: ignore[arg-type]
    ("allocate size negative", lambda e: e.backend.allocate(e.device, -1), ValueError),
    ("allocate size zero", lambda e: e.backend.allocate(e.device, 0), ValueError),
    ("allocate size 2**64", lambda e: e.backend.allocate(e.device, 2**64), OutOfMemoryError),
    ("allocate size 2**62", lambda e: e.backend.allocate(e.device, 2**62), OutOfMemoryError),
    ("deallocate str", lambda e: e.backend.deallocate("handle"), TypeError),  # type: ignore[arg-type]
    ("deallocate None", lambda e: e.backend.deallocate(None), TypeError),  # type: ignore[arg-type]
    ("deallocate freed", lambda e: e.backend.deallocate(e.freed), InvalidHandleError),
    (
        "deallocate forged id",
        lambda e: e.backend.deallocate(forged(e, handle_id=secrets.token_hex(16))),
        InvalidHandleError,
    ),
    (
        "deallocate forged size",
        lambda e: e.backend.deallocate(forged(e, size_bytes=SIZE * 2)),
        InvalidHandleError,
    ),
    (
        "deallocate forged device",
        lambda e: e.backend.deallocate(forged(e, device_id=f"{e.backend.name}:1")),
        InvalidHandleError,
    ),
    ("deallocate other instance's", lambda e: e.backend.deallocate(e.foreign), InvalidHandleError),
    ("write src str", lambda e: e.backend.copy_to_device("text", e.handle), TypeError),
    ("write src None", lambda e: e.backend.copy_to_device(None, e.handle), TypeError),
    ("write src int", lambda e: e.backend.copy_to_device(12, e.handle), TypeError),
    ("write src object", lambda e: e.backend.copy_to_device(object(), e.handle), TypeError),
    (
        "write src non-contiguous",
        lambda e: e.backend.copy_to_device(non_contiguous(), e.handle),
        TypeError,
    ),
    ("write dst not a handle", lambda e: e.backend.copy_to_device(b"x", "h"), TypeError),  # type: ignore[arg-type]
    ("write offset negative", lambda e: e.backend.copy_to_device(b"x", e.handle, -1), ValueError),
    ("write offset float", lambda e: e.backend.copy_to_device(b"x", e.handle, 1.0), TypeError),  # type: ignore[arg-type]
    ("write offset None", lambda e: e.backend.copy_to_device(b"x", e.handle, None), TypeError),  # type: ignore[arg-type]
    ("write offset 2**64", lambda e: e.backend.copy_to_device(b"x", e.handle, 2**64), OutOfBoundsError),
    ("write past end", lambda e: e.backend.copy_to_device(b"xy", e.handle, SIZE - 1), OutOfBoundsError),
    ("write too long", lambda e: e.backend.copy_to_device(bytes(SIZE + 1), e.handle), OutOfBoundsError),
    ("write freed", lambda e: e.backend.copy_to_device(b"x", e.freed), InvalidHandleError),
    ("write other instance's", lambda e: e.backend.copy_to_device(b"x", e.foreign), InvalidHandleError),
    ("read size negative", lambda e: e.backend.copy_from_device(e.handle, 0, -1), ValueError),
    ("read size bool", lambda e: e.backend.copy_from_device(e.handle, 0, True), TypeError),
    ("read offset str", lambda e: e.backend.copy_from_device(e.handle, "0", 1), TypeError),  # type: ignore[arg-type]
    ("read past end", lambda e: e.backend.copy_from_device(e.handle, 1, SIZE), OutOfBoundsError),
    ("read size 2**64", lambda e: e.backend.copy_from_device(e.handle, 0, 2**64), OutOfBoundsError),
    (
        "read forged",
        lambda e: e.backend.copy_from_device(forged(e, handle_id="0" * 32), 0, 1),
        InvalidHandleError,
    ),
    (
        "read_into bytes (read-only)",
        lambda e: e.backend.copy_from_device_into(e.handle, 0, bytes(4)),
        TypeError,
    ),
    (
        "read_into read-only view",
        lambda e: e.backend.copy_from_device_into(e.handle, 0, memoryview(bytearray(4)).toreadonly()),
        TypeError,
    ),
    ("read_into non-buffer", lambda e: e.backend.copy_from_device_into(e.handle, 0, [0, 0]), TypeError),
    (
        "read_into non-contiguous",
        lambda e: e.backend.copy_from_device_into(e.handle, 0, non_contiguous()),
        TypeError,
    ),
    (
        "read_into too large",
        lambda e: e.backend.copy_from_device_into(e.handle, 0, bytearray(SIZE + 1)),
        OutOfBoundsError,
    ),
    (
        "read_into freed",
        lambda e: e.backend.copy_from_device_into(e.freed, 0, bytearray(1)),
        InvalidHandleError,
    ),
    (
        "d2d size past src",
        lambda e: e.backend.copy_device_to_device(e.handle, e.handle, SIZE, 1, 0),
        OutOfBoundsError,
    ),
    (
        "d2d dst offset past end",
        lambda e: e.backend.copy_device_to_device(e.handle, e.handle, 1, 0, SIZE),
        OutOfBoundsError,
    ),
    (
        "d2d size 2**64",
        lambda e: e.backend.copy_device_to_device(e.handle, e.handle, 2**64),
        OutOfBoundsError,
    ),
    ("d2d size negative", lambda e: e.backend.copy_device_to_device(e.handle, e.handle, -1), ValueError),
    (
        "d2d src freed",
        lambda e: e.backend.copy_device_to_device(e.freed, e.handle, 1),
        InvalidHandleError,
    ),
    (
        "d2d dst other instance's",
        lambda e: e.backend.copy_device_to_device(e.handle, e.foreign, 1),
        InvalidHandleError,
    ),
    (
        "synchronize unknown device",
        lambda e: e.backend.synchronize(f"{e.backend.name}:42"),
        DeviceNotFoundError,
    ),
    ("memory info None", lambda e: e.backend.get_device_memory_info(None), TypeError),  # type: ignore[arg-type]
    ("properties unknown", lambda e: e.backend.get_device_properties("nope:0"), DeviceNotFoundError),
    ("temperature bad id", lambda e: e.backend.get_device_temperature(3), TypeError),  # type: ignore[arg-type]
]


@pytest.fixture
async def env(backend: GPUBackend[Any], factory: Callable[[], GPUBackend[Any]]) -> Any:
    other = factory()

    async def setup() -> Env:
        device = backend.list_devices()[0].device_id
        handle = await backend.allocate(device, SIZE)
        await backend.copy_to_device(CANARY[:SIZE] * (SIZE // len(CANARY[:SIZE])), handle)
        freed = await backend.allocate(device, SIZE)
        await backend.deallocate(freed)
        await other.initialize()
        foreign = await other.allocate(device, SIZE)
        return Env(backend, device, handle, freed, foreign)

    yield await setup()
    await other.shutdown()


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 30
    assert len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "call", "expected"), CASES, ids=[c[0] for c in CASES])
async def test_bad_input(env: Env, name: str, call: Call, expected: type[BaseException]) -> None:
    with pytest.raises(expected) as caught:
        await call(env)
    assert type(caught.value).__module__.startswith(("exo_gpu_plugins", "builtins")), name
    expected_bytes = CANARY[:SIZE] * (SIZE // len(CANARY[:SIZE]))
    assert await env.backend.copy_from_device(env.handle, 0, SIZE) == expected_bytes
    probe = await env.backend.allocate(env.device, 64)
    await env.backend.copy_to_device(b"still fine", probe, 3)
    assert await env.backend.copy_from_device(probe, 0, 13) == b"\0\0\0still fine"
    await env.backend.deallocate(probe)


async def test_use_after_shutdown(factory: Callable[[], GPUBackend[Any]]) -> None:
    backend = factory()
    await backend.initialize()
    device = backend.list_devices()[0].device_id
    handle = await backend.allocate(device, 64)
    await backend.shutdown()
    for call in (
        backend.allocate(device, 64),
        backend.deallocate(handle),
        backend.copy_to_device(b"x", handle),
        backend.copy_from_device(handle, 0, 1),
        backend.synchronize(device),
        backend.get_device_memory_info(device),
    ):
        with pytest.raises(BackendClosedError):
            await call
    with pytest.raises(BackendClosedError):
        backend.list_devices()
    with pytest.raises(BackendClosedError):
        await backend.initialize()
