"""The models refuse impossible values and keep the fork's dict-style access."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from exo_gpu_plugins import Capabilities, GPUDevice, MemoryHandle, MemoryReport
from exo_gpu_plugins._handles import new_handle
from exo_gpu_plugins._trusted import trusted
from exo_gpu_plugins.models import DeviceType
from exo_gpu_plugins.weights import LoadedTensor


def report(**changes: object) -> MemoryReport:
    values: dict[str, object] = dict(
        device_id="x:0",
        total_bytes=100,
        used_bytes=10,
        available_bytes=80,
        reserved_bytes=10,
        source="test",
    )
    values.update(changes)
    return MemoryReport(**values)  # type: ignore[arg-type]


def test_report_answers_like_the_forks_dict() -> None:
    r = report()
    assert r["total_bytes"] == 100 and r["available_bytes"] == 80
    assert "used_bytes" in r.keys()  # noqa: SIM118 (the fork.s dict API)
    with pytest.raises(KeyError):
        r["nope"]


@pytest.mark.parametrize(
    "changes",
    [
        {"available_bytes": 120, "reserved_bytes": 0, "used_bytes": 0},
        {"used_bytes": 101},
        {"used_bytes": -1, "reserved_bytes": 21},
        {"reserved_bytes": 11},
    ],
)
def test_impossible_reports_are_refused(changes: dict[str, int]) -> None:
    with pytest.raises(ValidationError):
        report(**changes)


def test_models_are_frozen_and_hashable() -> None:
    handle = MemoryHandle(
        handle_id="a" * 32, device_id="host:0", size_bytes=1, allocated_at=datetime.now(timezone.utc)
    )
    with pytest.raises(ValidationError):
        handle.size_bytes = 2  # type: ignore[misc]
    assert {handle: 1}[handle] == 1


def test_trusted_records_equal_validated_ones() -> None:
    """`trusted` builds what validation would have built: equal, same hash, still frozen."""
    handle = new_handle("host:0", 64)
    values = {
        "handle": handle,
        "offset_bytes": 8,
        "size_bytes": 16,
        "dtype": "BF16",
        "shape": (2, 4),
        "file": "model.safetensors",
        "file_offset": 128,
    }
    fast = trusted(LoadedTensor, dict(values))
    checked = LoadedTensor(**values)
    assert fast == checked and hash(fast) == hash(checked)
    assert fast.model_dump() == checked.model_dump()
    assert fast.model_copy(update={"offset_bytes": 0}).offset_bytes == 0
    with pytest.raises(ValidationError):
        fast.offset_bytes = 0  # type: ignore[misc]
    assert MemoryHandle.model_validate(handle.model_dump()) == handle


@pytest.mark.parametrize("size", [0, -5])
def test_handle_size_must_be_positive(size: int) -> None:
    with pytest.raises(ValidationError):
        MemoryHandle(
            handle_id="a", device_id="host:0", size_bytes=size, allocated_at=datetime.now(timezone.utc)
        )


def test_unknown_device_fields_are_none_not_invented() -> None:
    device = GPUDevice(
        device_id="x:0",
        name="n",
        vendor="v",
        backend="x",
        backend_name="x",
        device_type=DeviceType.OTHER,
        memory_bytes=1,
    )
    assert device.compute_units is None and device.clock_rate_mhz is None
    assert device.bandwidth_gbps is None and device.uuid is None


def test_capabilities_require_the_facts() -> None:
    with pytest.raises(ValidationError):
        Capabilities(device_id="x:0")  # type: ignore[call-arg]


async def test_handles_from_the_core_behave_like_validated_ones() -> None:
    from exo_gpu_plugins.host.backend import HostBackend

    backend = HostBackend()
    await backend.initialize()
    handle = await backend.allocate("host:0", 16)
    rebuilt = MemoryHandle(**handle.model_dump())
    assert rebuilt == handle and hash(rebuilt) == hash(handle)
    assert handle.model_copy(update={"size_bytes": 8}).size_bytes == 8
    assert MemoryHandle.model_validate_json(handle.model_dump_json()) == handle
    await backend.shutdown()
