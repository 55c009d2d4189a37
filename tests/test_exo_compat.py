"""exo's fork code, run unchanged against every installed backend.

Each test is written the way code against the fork's `exo.gpu.backend` reads: comparisons with
`device.memory_available`, the memory report used as a dict, the fork's own constructor calls,
telemetry that may be `None`. If one of these breaks, exo breaks.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest

from exo_gpu_plugins import GPUBackend, GPUDevice, MemoryHandle, get_registry
from exo_gpu_plugins.errors import InvalidHandleError
from exo_gpu_plugins.profile import read_gpu_profiles


def _backend_names() -> list[str]:
    names = []
    for name in ("host", "vulkan"):
        if name in get_registry().names():
            names.append(name)
    return names


@pytest.fixture(params=_backend_names())
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[GPUBackend]:
    entry = get_registry().entry(request.param)
    reason = entry.unavailable_reason()
    if reason is not None:
        if request.param == "vulkan" and os.environ.get("EXO_GPU_REQUIRE_VULKAN") == "1":
            pytest.fail(f"EXO_GPU_REQUIRE_VULKAN=1 but Vulkan is unavailable: {reason}")
        pytest.skip(f"{request.param} unavailable: {reason}")
    instance = entry.load_class()()
    await instance.initialize()
    yield instance
    await instance.shutdown()


async def test_model_fits_check_compares_ints(backend: GPUBackend) -> None:
    # The fork's engine: `if model_size > device.memory_available: raise ...`
    for device in backend.list_devices():
        assert isinstance(device.memory_available, int)
        assert device.memory_available >= 0
        same = backend.get_device(device.device_id)
        assert same is not None and isinstance(same.memory_available, int)
        fresh = await backend.get_device_properties(device.device_id)
        assert isinstance(fresh.memory_available, int)


async def test_list_devices_memory_is_live(backend: GPUBackend) -> None:
    device_id = backend.list_devices()[0].device_id
    caps = backend.capabilities(device_id)
    if not (caps.memory_budget or caps.available_tracks_allocations):
        pytest.skip("available bytes are an OS estimate on this backend")
    before = backend.list_devices()[0].memory_available
    size = 64 << 20
    handle = await backend.allocate(device_id, size)
    after = backend.list_devices()[0].memory_available
    assert before is not None and after is not None
    assert after < before
    await backend.deallocate(handle)


async def test_allocate_what_the_device_says_is_free(backend: GPUBackend) -> None:
    # The fork's tests allocate a share of `device.memory_available` bytes.
    device = backend.list_devices()[0]
    assert device.memory_available is not None
    share = max(1, min(device.memory_available // 64, 32 << 20))
    handle = await backend.allocate(device.device_id, share)
    await backend.deallocate(handle)


async def test_memory_report_is_the_forks_dict(backend: GPUBackend) -> None:
    device_id = backend.list_devices()[0].device_id
    info = await backend.get_device_memory_info(device_id)
    assert "available_bytes" in info and "used_bytes" in info
    assert "source" not in info  # the fork's dict had the four figures only
    assert info.get("total_bytes") == info["total_bytes"] == info.total_bytes
    assert info.get("missing") is None and info.get("missing", 7) == 7
    assert list(info) == ["total_bytes", "used_bytes", "available_bytes", "reserved_bytes"]
    assert len(info) == 4 and set(info.keys()) == set(dict(info))
    assert sum(v for k, v in info.items() if k != "total_bytes") == info["total_bytes"]
    assert json.loads(json.dumps(dict(info))) == dict(info)
    used_ratio = info["used_bytes"] / info["total_bytes"]
    assert 0.0 <= used_ratio <= 1.0


async def test_optional_telemetry_may_be_none(backend: GPUBackend) -> None:
    device_id = backend.list_devices()[0].device_id
    temp = await backend.get_device_temperature(device_id)
    power = await backend.get_device_power_usage(device_id)
    clock = await backend.get_device_clock_rate(device_id)
    usage = await backend.get_device_utilization(device_id)
    profile = {
        "temp": temp if temp is not None else 0.0,
        "sys_power": power if power is not None else 0.0,
        "gpu_usage": usage if usage is not None else 0.0,
        "clock": clock or 0,
    }
    assert all(isinstance(v, (int, float)) for v in profile.values())
    if usage is not None:
        assert 0.0 <= usage <= 100.0


def test_forks_device_constructor_calls() -> None:
    # Keyword call, as the fork's CPU backend writes it.
    device = GPUDevice(
        device_id="cpu:0",
        name="CPU",
        vendor="intel",
        backend="cpu",
        compute_capability="N/A",
        memory_bytes=16 << 30,
        memory_available=8 << 30,
        compute_units=8,
        tensor_core_count=0,
        max_threads_per_block=1,
        clock_rate_mhz=3000,
        bandwidth_gbps=50.0,
        support_level="full",
        driver_version="N/A",
        backend_name="cpu",
    )
    assert device.memory_available == 8 << 30 and device.clock_rate_mhz == 3000
    # Positional call, in the fork's dataclass field order.
    positional = GPUDevice(
        "cuda:0", "GPU", "nvidia", "cuda", "9.0", 80 << 30, 79 << 30, 132, 528, 1024, 1980,
        3350.0, "full", "580", "cuda",
    )  # fmt: skip
    assert positional.compute_capability == "9.0" and positional.backend_name == "cuda"
    assert positional.tensor_core_count == 528 and positional.bandwidth_gbps == 3350.0
    with pytest.raises(TypeError):
        GPUDevice("cuda:0", "GPU", device_id="cuda:1")  # type: ignore[call-arg]


async def test_forks_handle_constructor_is_refused_by_backends(backend: GPUBackend) -> None:
    device_id = backend.list_devices()[0].device_id
    handle = MemoryHandle(device_id=device_id, size_bytes=64)
    assert handle.handle_id and isinstance(handle.allocated_at, datetime)
    assert MemoryHandle(device_id=device_id, size_bytes=64).handle_id != handle.handle_id
    with pytest.raises(InvalidHandleError):
        await backend.copy_to_device(b"x", handle)
    with pytest.raises(InvalidHandleError):
        await backend.deallocate(handle)


async def test_device_fields_the_fork_reads(backend: GPUBackend) -> None:
    device = backend.list_devices()[0]
    for field in ("compute_capability", "clock_rate_mhz", "bandwidth_gbps", "tensor_core_count"):
        value = getattr(device, field)
        assert value is None or isinstance(value, (str, int, float))
    sources = dict(device.field_sources)
    for field, value in device.model_dump().items():
        if field in sources:
            assert value is not None, f"{field} has a source but no value"


async def test_node_profile_function_from_the_docs(backend: GPUBackend) -> None:
    text = (Path(__file__).parents[1] / "docs" / "exo-integration.md").read_text()
    code = text.split("## Filling exo's node profile", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(code, namespace)
    fields = await namespace["gpu_system_profile"](backend)  # type: ignore[operator]
    assert set(fields) == {"gpu_usage", "temp", "sys_power"}
    assert all(isinstance(v, float) for v in fields.values())
    (first, *_) = await read_gpu_profiles(backend)
    assert first.memory_available_bytes <= first.memory_total_bytes
