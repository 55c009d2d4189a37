"""The hook API refuses misuse when a backend class is defined or opened, with a message that
names the hook and says what it must be."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from exo_gpu_plugins.backend import HOOK_KINDS
from exo_gpu_plugins.errors import GPUError
from exo_gpu_plugins.host.backend import HostBackend
from exo_gpu_plugins.models import DeviceDescription, GPUDevice, MemoryReport


@pytest.mark.parametrize("hook", sorted(h for h, is_async in HOOK_KINDS.items() if not is_async))
def test_async_def_for_a_sync_hook_is_refused(hook: str) -> None:
    async def wrong(self: object, *args: object) -> None:
        return None

    with pytest.raises(TypeError, match=rf"{hook} must be a plain `def` method \(not async\)"):
        type("Wrong", (HostBackend,), {hook: wrong})


@pytest.mark.parametrize("hook", sorted(h for h, is_async in HOOK_KINDS.items() if is_async))
def test_plain_def_for_an_async_hook_is_refused(hook: str) -> None:
    def wrong(self: object, *args: object) -> None:
        return None

    with pytest.raises(TypeError, match=rf"{hook} must be an `async def` method"):
        type("Wrong", (HostBackend,), {hook: wrong})


@pytest.mark.parametrize("hook", ["_describe", "_free_blocking"])
def test_hooks_of_version_0_1_are_refused_with_the_migration(hook: str) -> None:
    with pytest.raises(TypeError, match=rf"{hook} is a hook of exo-gpu-plugins 0.1"):
        type("Old", (HostBackend,), {hook: lambda self, *a: None})


def test_the_unzeroed_hook_of_0_2_is_refused_with_what_replaced_it() -> None:
    replaced = r"_allocate_unzeroed is a hook of exo-gpu-plugins 0.2: .*zeroed"
    with pytest.raises(TypeError, match=replaced):
        type("Old", (HostBackend,), {"_allocate_unzeroed": lambda self, *a: None})


def test_a_missing_hook_is_named() -> None:
    from exo_gpu_plugins.backend import GPUBackend

    class Partial(GPUBackend[int]):
        name = "partial"

        def _open(self) -> None: ...

    with pytest.raises(TypeError, match="_allocate"):
        Partial()  # type: ignore[abstract]


async def test_a_gpudevice_from_discover_is_refused() -> None:
    class FillsDevice(HostBackend):
        def _discover_devices(self) -> Sequence[DeviceDescription]:
            (description,) = super()._discover_devices()
            return [
                GPUDevice(
                    device_id="host:7", backend="elsewhere", backend_name="x", **description.__dict__
                )
            ]

    with pytest.raises(TypeError, match="return a DeviceDescription; the core fills device_id"):
        await FillsDevice().initialize()


async def test_memory_bytes_must_agree_with_the_report() -> None:
    class Disagrees(HostBackend):
        def _memory_report(self, index: int) -> MemoryReport:
            report = super()._memory_report(index)
            return report.model_copy(update={"total_bytes": report.total_bytes + 4096})

    backend = Disagrees()
    with pytest.raises(GPUError, match=r"memory_bytes=.* but _memory_report\(\) says total_bytes"):
        await backend.initialize()
    assert not backend.is_open


async def test_the_core_fills_what_it_knows() -> None:
    backend = HostBackend()
    await backend.initialize()
    try:
        (device,) = backend.list_devices()
        assert (device.device_id, device.backend, device.backend_name) == ("host:0", "host", "host")
        report = await backend.get_device_memory_info("host:0")
        assert device.memory_bytes == report.total_bytes
        assert isinstance(device.memory_available, int)
    finally:
        await backend.shutdown()
