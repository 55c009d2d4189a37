"""File copies into memory that CUDA imported go through CUDA's copy engine (NVIDIA): the bytes
land where Vulkan and torch read them, a cold file keeps the Vulkan path, a file that ends early
is a `FileReadError` naming it, and the copier's ring is freed at shutdown.

These run where a Vulkan device declares the "cuda" export kind (the GPU machine); elsewhere they
skip, unless EXO_GPU_REQUIRE_CUDA=1, which makes that a failure."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from exo_gpu_plugins._exports import CUDA_COPY_MIN_BYTES
from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import ConfigError, FileReadError, InteropError
from exo_gpu_plugins.interop.cuda_copy import SLOT_BYTES, CudaFileCopier
from exo_gpu_plugins.page_cache import cached_fraction
from exo_gpu_plugins.weights import load_weights
from exo_gpu_plugins.weights.plan import plan_checkpoint
from exo_gpu_plugins.weights.synthetic import LlamaShape, write_llama
from tests.interop.conftest import device_of, make_backend, require_torch


def cuda_copied(backend: GPUBackend[Any]) -> int:
    """Bytes the backend's CUDA copiers have moved (0 before the first)."""
    copiers = backend._cuda_imports._copiers.values()
    return sum(copier.copied_bytes for copier in copiers if copier is not None)


def pattern_file(path: Path, size: int) -> bytes:
    data = (bytes(range(251)) * (size // 251 + 1))[:size]
    path.write_bytes(data)
    return data


async def test_a_copy_into_cuda_imported_memory_runs_on_cuda(
    vulkan: GPUBackend[Any], tmp_path: Path
) -> None:
    torch = require_torch()
    device = device_of(vulkan)
    size = 3 * SLOT_BYTES + 12_345  # whole slots and a short last one
    data = pattern_file(tmp_path / "bytes", size + 777)
    handle = await vulkan.allocate(device, size + 8192, exportable=True)
    await vulkan.copy_to_device(b"\xee" * 8192, handle, size)  # bytes the copy must not touch
    await vulkan.prepare_export(handle)
    before = cuda_copied(vulkan)
    # An odd file offset and an odd device offset.
    copied = await vulkan.copy_file_to_device(
        tmp_path / "bytes", handle, 1, file_offset=777, size_bytes=size - 1
    )
    assert copied == size - 1
    assert cuda_copied(vulkan) - before == size - 1, "the copy did not go through CUDA"
    # Vulkan reads what CUDA wrote, the bytes around it untouched.
    back = await vulkan.copy_from_device(handle, 0, size + 8192)
    assert back[1:size] == data[777 : 777 + size - 1]
    assert back[size:] == b"\xee" * 8192
    # And torch sees the same bytes in place.
    tensor = torch.from_dlpack(await vulkan.export_tensor(handle, device="cuda"))
    assert tensor[1:size].cpu().numpy().tobytes() == data[777 : 777 + size - 1]


async def test_a_small_copy_or_plain_memory_keeps_the_vulkan_path(
    vulkan: GPUBackend[Any], tmp_path: Path
) -> None:
    device = device_of(vulkan)
    data = pattern_file(tmp_path / "bytes", 2 * SLOT_BYTES)
    exportable = await vulkan.allocate(device, 2 * SLOT_BYTES, exportable=True)
    await vulkan.prepare_export(exportable)
    plain = await vulkan.allocate(device, 2 * SLOT_BYTES)
    before = cuda_copied(vulkan)
    await vulkan.copy_file_to_device(tmp_path / "bytes", exportable, size_bytes=4096)
    await vulkan.copy_file_to_device(tmp_path / "bytes", plain)
    assert cuda_copied(vulkan) == before
    assert await vulkan.copy_from_device(exportable, 0, 4096) == data[:4096]
    assert await vulkan.copy_from_device(plain) == data


async def test_a_cold_file_keeps_the_vulkan_path(vulkan: GPUBackend[Any], tmp_path: Path) -> None:
    device = device_of(vulkan)
    size = 4 * SLOT_BYTES
    data = pattern_file(tmp_path / "cold", size)
    fd = os.open(tmp_path / "cold", os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        fraction = cached_fraction(fd, 0, size)
        if fraction is None or fraction >= 0.5:
            pytest.skip(f"{tmp_path} keeps the file cached (tmpfs?): {fraction}")
        handle = await vulkan.allocate(device, size, exportable=True)
        await vulkan.prepare_export(handle)
        before = cuda_copied(vulkan)
        await vulkan.copy_file_to_device(fd, handle)
    finally:
        os.close(fd)
    assert cuda_copied(vulkan) == before, "a cold file was read buffered through CUDA"
    assert await vulkan.copy_from_device(handle) == data


async def test_a_checkpoint_load_fills_its_memory_through_cuda(
    vulkan: GPUBackend[Any], tmp_path: Path
) -> None:
    torch = require_torch()
    from safetensors.torch import load_file

    path = write_llama(tmp_path, LlamaShape.for_size(512 << 20))  # two allocations
    before = cuda_copied(vulkan)
    loaded = await load_weights(vulkan, device_of(vulkan), path, exportable=True)
    # Each allocation is imported before its copies start: every copy of a slot or more went
    # through CUDA.
    limit = vulkan.capabilities(device_of(vulkan)).max_allocation_bytes
    plan = plan_checkpoint(path, max_allocation_bytes=limit)
    steps = [step.size for allocation in plan.allocations for step in allocation.steps]
    assert len(steps) >= 2
    assert cuda_copied(vulkan) - before == sum(size for size in steps if size >= CUDA_COPY_MIN_BYTES)
    tensors = await loaded.to_torch(vulkan)
    expected = load_file(path, device="cuda")
    for name, tensor in tensors.items():
        assert torch.equal(tensor.view(torch.uint8), expected[name].view(torch.uint8)), name
    # A torch write is read back by Vulkan (storage in the imported memory).
    name, entry = next(iter(loaded.tensors.items()))
    assert entry.handle is not None
    tensors[name].view(torch.uint8).fill_(0x5A)
    torch.cuda.synchronize()
    back = await vulkan.copy_from_device(entry.handle, entry.offset_bytes, entry.size_bytes)
    assert back == b"\x5a" * entry.size_bytes


async def test_a_file_that_ends_early_is_a_file_read_error(
    vulkan: GPUBackend[Any], tmp_path: Path
) -> None:
    torch = require_torch()
    target = torch.zeros(4 * SLOT_BYTES, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()  # the copier's stream has no order with torch's
    data = pattern_file(tmp_path / "short", 2 * SLOT_BYTES + 100)
    copier = CudaFileCopier(torch.cuda.current_device(), vulkan._read_file_into)
    fd = os.open(tmp_path / "short", os.O_RDONLY)
    try:
        with pytest.raises(FileReadError, match="short read"):
            copier.copy(fd, 0, 4 * SLOT_BYTES, target.data_ptr())
        # The copier still works after a failed copy.
        copier.copy(fd, 0, 2 * SLOT_BYTES + 100, target.data_ptr())
    finally:
        os.close(fd)
        copier.close()
    assert target[: 2 * SLOT_BYTES + 100].cpu().numpy().tobytes() == data
    copier.close()  # idempotent
    with pytest.raises(InteropError, match="closed"):
        copier.copy(0, 0, 1, target.data_ptr())


async def test_the_copier_is_closed_at_shutdown(vulkan: GPUBackend[Any], tmp_path: Path) -> None:
    device = device_of(vulkan)
    pattern_file(tmp_path / "bytes", 2 * SLOT_BYTES)
    handle = await vulkan.allocate(device, 2 * SLOT_BYTES, exportable=True)
    await vulkan.prepare_export(handle)
    await vulkan.copy_file_to_device(tmp_path / "bytes", handle)
    copiers = [copier for copier in vulkan._cuda_imports._copiers.values() if copier is not None]
    assert copiers, "no CUDA copier was made"
    await vulkan.shutdown()
    assert all(copier.closed and copier._host.value is None for copier in copiers)


async def test_a_copier_that_cannot_be_made_leaves_the_vulkan_path(
    vulkan: GPUBackend[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from exo_gpu_plugins.interop import cuda_copy

    monkeypatch.setattr(cuda_copy, "SLOTS", 1 << 16)  # a 1 TiB pinned ring: cuMemHostAlloc refuses
    device = device_of(vulkan)
    data = pattern_file(tmp_path / "bytes", 2 * SLOT_BYTES)
    handle = await vulkan.allocate(device, 2 * SLOT_BYTES, exportable=True)
    await vulkan.prepare_export(handle)
    with caplog.at_level(logging.WARNING):
        await vulkan.copy_file_to_device(tmp_path / "bytes", handle)
        await vulkan.copy_file_to_device(tmp_path / "bytes", handle)
    assert caplog.text.count("copies keep the backend's own path") == 1, caplog.text
    assert list(vulkan._cuda_imports._copiers.values()) == [None]
    assert await vulkan.copy_from_device(handle) == data


@pytest.mark.parametrize("value", ["off", "bogus"])
async def test_the_cuda_copy_setting_is_strict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # Runs on any device that makes exportable memory (lavapipe too): "off" copies the usual
    # way, a value that is neither on nor off is refused, naming the variable.
    backend = make_backend("vulkan")
    await backend.initialize()
    try:
        device = device_of(backend)
        if "fd" not in backend.capabilities(device).export_kinds:
            pytest.skip(f"{device} makes no exportable memory")
        data = pattern_file(tmp_path / "bytes", SLOT_BYTES)
        handle = await backend.allocate(device, SLOT_BYTES, exportable=True)
        monkeypatch.setenv("EXO_GPU_CUDA_COPY", value)
        if value == "off":
            await backend.copy_file_to_device(tmp_path / "bytes", handle)
            assert await backend.copy_from_device(handle) == data
        else:
            with pytest.raises(ConfigError, match="EXO_GPU_CUDA_COPY='bogus'"):
                await backend.copy_file_to_device(tmp_path / "bytes", handle)
    finally:
        await backend.shutdown()


def test_the_copier_is_tried_once_per_device(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Runs everywhere (no CUDA needed): a copier whose making fails is tried once, and from then
    # on `made_copier` says so without waiting, so copies keep the backend's path at no cost.
    from exo_gpu_plugins.interop import cuda_copy
    from exo_gpu_plugins.interop.views import CudaImports

    made: list[int] = []

    class Refused:
        def __init__(self, ordinal: int, read: Any) -> None:
            made.append(ordinal)
            raise InteropError("cuMemHostAlloc failed: CUDA_ERROR_OUT_OF_MEMORY")

    monkeypatch.setattr(cuda_copy, "CudaFileCopier", Refused)
    imports = CudaImports()
    assert imports.made_copier(0) == (False, None)
    with caplog.at_level(logging.WARNING):
        assert imports.copier(0, lambda fd, offset, out: None) is None
        assert imports.copier(0, lambda fd, offset, out: None) is None
    assert made == [0]
    assert caplog.text.count("copies keep the backend's own path") == 1, caplog.text
    assert imports.made_copier(0) == (True, None)
    assert imports.made_copier(1) == (False, None)  # another device is still to be tried
    imports.close()
    assert imports.made_copier(1) == (True, None)  # closed: nothing is made any more
    assert imports.copier(1, lambda fd, offset, out: None) is None
    assert made == [0]
