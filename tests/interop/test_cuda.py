"""Vulkan memory as CUDA tensors (NVIDIA): the opaque fd imported with the CUDA driver API into
the device with the same UUID, viewed by torch in place, written by both sides, alive after free
and shutdown, and 1,000 export/drop cycles leaving descriptors and device memory flat.

These run where a Vulkan device declares the "cuda" export kind (the GPU machine); elsewhere they
skip, unless EXO_GPU_REQUIRE_CUDA=1, which makes that a failure."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import InteropError
from exo_gpu_plugins.interop import live_exports
from exo_gpu_plugins.weights import load_weights
from exo_gpu_plugins.weights.synthetic import LlamaShape, write_llama
from tests.interop.conftest import device_of, make_backend, require_torch

PATTERN = bytes((i * 13 + 1) % 256 for i in range(1 << 20))


async def test_torch_cuda_tensor_is_the_vulkan_memory(vulkan: GPUBackend[Any]) -> None:
    torch = require_torch()
    handle = await vulkan.allocate(device_of(vulkan), len(PATTERN), exportable=True)
    await vulkan.copy_to_device(PATTERN, handle)
    view = await vulkan.export_tensor(handle, dtype="U8", device="cuda")
    tensor = torch.from_dlpack(view)
    assert tensor.is_cuda and tensor.data_ptr() == view.data_pointer
    assert tensor.cpu().numpy().tobytes() == PATTERN
    # CUDA writes, synchronizes (the documented rule), Vulkan reads.
    tensor[:16].fill_(0xAB)
    torch.cuda.synchronize()
    assert await vulkan.copy_from_device(handle, 0, 16) == b"\xab" * 16
    # Vulkan writes (done when the await returns), CUDA reads.
    await vulkan.copy_to_device(b"\x01\x02", handle, 100)
    assert tensor[100:102].tolist() == [1, 2]
    typed = torch.from_dlpack(
        await vulkan.export_tensor(
            handle, dtype="BF16", shape=(256, 256), offset_bytes=4096, device="cuda"
        )
    )
    assert typed.dtype == torch.bfloat16 and typed.data_ptr() == tensor.data_ptr() + 4096


async def test_a_large_allocation_of_odd_size_is_a_cuda_tensor_to_its_last_byte(
    vulkan: GPUBackend[Any],
) -> None:
    # Its memory object is rounded up to whole 2 MiB pages (a fast CUDA import); the view is not.
    torch = require_torch()
    size = (96 << 20) + 4093
    handle = await vulkan.allocate(device_of(vulkan), size, exportable=True)
    await vulkan.copy_to_device(b"tail" * 16, handle, size - 64)
    tensor = torch.from_dlpack(await vulkan.export_tensor(handle, device="cuda"))
    assert tensor.numel() == size
    assert bytes(tensor[-64:].cpu().tolist()) == b"tail" * 16
    tensor[-1] = 0x55
    torch.cuda.synchronize()
    assert await vulkan.copy_from_device(handle, size - 1, 1) == b"\x55"


# A process that exits right after its last tensor goes (the CUDA import is then being closed on
# the release thread while the interpreter exits: this died with SIGSEGV before that thread was
# stopped at exit), or with a tensor still alive (whose import must not start a close then).
EXIT_RIGHT_AFTER = textwrap.dedent(
    """
    import asyncio, sys, torch
    import exo_gpu_plugins

    kept = []

    async def main(size, keep):
        backend = await exo_gpu_plugins.open_backend("vulkan")
        device = backend.list_devices()[0].device_id
        handle = await backend.allocate(device, size, exportable=True)
        tensor = torch.from_dlpack(await backend.export_tensor(handle, device="cuda"))
        tensor[0] = 1
        torch.cuda.synchronize()
        if keep:
            kept.append(tensor)
        del tensor
        await backend.deallocate(handle)
        await backend.shutdown()

    asyncio.run(main(int(sys.argv[1]), sys.argv[2] == "keep"))
    """
)


@pytest.mark.parametrize(("size", "tensor"), [(64 << 20, "drop"), (1 << 30, "drop"), (64 << 20, "keep")])
async def test_a_process_exits_cleanly_right_after_its_cuda_tensors(
    vulkan: GPUBackend[Any], size: int, tensor: str
) -> None:
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", EXIT_RIGHT_AFTER, str(size), tensor],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"exit status {done.returncode}: {done.stderr[-2000:]}"


async def test_non_exportable_memory_says_so(vulkan: GPUBackend[Any]) -> None:
    handle = await vulkan.allocate(device_of(vulkan), 4096)
    with pytest.raises(InteropError, match="exportable=True"):
        await vulkan.export_tensor(handle, device="cuda")


@pytest.mark.parametrize("ending", ["deallocate", "shutdown"])
async def test_cuda_tensor_outlives_free_and_shutdown(ending: str) -> None:
    torch = require_torch()
    backend = make_backend("vulkan")
    await backend.initialize()
    device = device_of(backend)
    if "cuda" not in backend.capabilities(device).export_kinds:
        await backend.shutdown()
        if os.environ.get("EXO_GPU_REQUIRE_CUDA") == "1":
            pytest.fail("EXO_GPU_REQUIRE_CUDA=1 but the device exports no CUDA memory")
        pytest.skip("no CUDA export here")
    handle = await backend.allocate(device, len(PATTERN), exportable=True)
    await backend.copy_to_device(PATTERN, handle)
    tensor = torch.from_dlpack(await backend.export_tensor(handle, device="cuda"))
    if ending == "deallocate":
        await backend.deallocate(handle)
        for _ in range(4):
            other = await backend.allocate(device, len(PATTERN), exportable=True)
            await backend.copy_to_device(b"\x55" * len(PATTERN), other)
    await backend.shutdown()
    assert tensor.cpu().numpy().tobytes() == PATTERN, "memory a CUDA tensor still uses was freed"
    tensor.add_(1)
    torch.cuda.synchronize()


async def test_a_thousand_cuda_export_drop_cycles_leak_nothing(vulkan: GPUBackend[Any]) -> None:
    torch = require_torch()
    device = device_of(vulkan)

    async def cycle() -> None:
        handle = await vulkan.allocate(device, 4 << 20, exportable=True)
        tensor = torch.from_dlpack(await vulkan.export_tensor(handle, dtype="F32", device="cuda"))
        tensor.add_(1)
        await vulkan.deallocate(handle)
        del tensor

    for _ in range(20):
        await cycle()
    gc.collect()
    torch.cuda.synchronize()
    fds = len(os.listdir("/proc/self/fd"))
    free_before, _ = torch.cuda.mem_get_info()
    exports = live_exports()
    for _ in range(1000):
        await cycle()
    gc.collect()
    torch.cuda.synchronize()
    free_after, _ = torch.cuda.mem_get_info()
    assert live_exports() == exports
    assert len(os.listdir("/proc/self/fd")) == fds, "CUDA export cycles leak descriptors"
    assert free_before - free_after < 64 << 20, (
        f"device memory fell by {(free_before - free_after) >> 20} MiB over 1000 cycles"
    )


async def test_checkpoint_to_cuda_tensors_equals_load_file(
    vulkan: GPUBackend[Any], tmp_path: Path
) -> None:
    torch = require_torch()
    from safetensors.torch import load_file

    path = write_llama(tmp_path, LlamaShape(layers=2))
    loaded = await load_weights(vulkan, device_of(vulkan), path, exportable=True)
    tensors = await loaded.to_torch(vulkan)
    expected = load_file(path, device="cuda")
    for name, tensor in tensors.items():
        assert tensor.is_cuda and tensor.dtype == expected[name].dtype, name
        assert torch.equal(tensor.view(torch.uint8), expected[name].view(torch.uint8)), name


async def test_imports_prepared_ahead_are_dropped_with_their_allocation(vulkan: GPUBackend[Any]) -> None:
    torch = require_torch()
    device = device_of(vulkan)

    async def cycle() -> None:
        handle = await vulkan.allocate(device, 64 << 20, exportable=True)
        await vulkan.prepare_export(handle)  # imported into CUDA, no view taken
        await vulkan.deallocate(handle)

    for _ in range(5):
        await cycle()
    gc.collect()
    free_before, _ = torch.cuda.mem_get_info()
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(100):
        await cycle()
    gc.collect()
    free_after, _ = torch.cuda.mem_get_info()
    assert len(os.listdir("/proc/self/fd")) == fds
    assert free_before - free_after < 64 << 20, "prepared imports outlive their allocations"
    # And one prepared ahead is the one a view then uses.
    handle = await vulkan.allocate(device, 1 << 20, exportable=True)
    await vulkan.prepare_export(handle)
    await vulkan.copy_to_device(b"\x07" * 16, handle)
    tensor = torch.from_dlpack(await vulkan.export_tensor(handle, device="cuda"))
    assert tensor[:16].tolist() == [7] * 16


async def test_a_misaligned_cuda_view_is_refused(vulkan: GPUBackend[Any]) -> None:
    handle = await vulkan.allocate(device_of(vulkan), 4096, exportable=True)
    with pytest.raises(InteropError, match="aligned"):
        await vulkan.export_tensor(handle, dtype="F32", offset_bytes=2, shape=(4,), device="cuda")


async def test_a_view_made_as_the_last_one_goes_gets_a_live_import(vulkan: GPUBackend[Any]) -> None:
    # The last view's import is closed on the release thread: a view made before that release
    # runs keeps the import open; one made after it imports again. Never a closed import.
    torch = require_torch()
    handle = await vulkan.allocate(device_of(vulkan), len(PATTERN), exportable=True)
    await vulkan.copy_to_device(PATTERN, handle)
    expected = torch.frombuffer(bytearray(PATTERN), dtype=torch.uint8)
    tensor = torch.from_dlpack(await vulkan.export_tensor(handle, device="cuda"))
    for _ in range(20):
        del tensor  # the last view: its release is queued
        tensor = torch.from_dlpack(await vulkan.export_tensor(handle, device="cuda"))
        await asyncio.sleep(0.02)  # the queued release runs meanwhile
        assert torch.equal(tensor.cpu(), expected), "a view uses an import that was closed"
