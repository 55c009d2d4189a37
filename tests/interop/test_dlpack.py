"""DLPack views of allocations and host buffers on the CPU: zero-copy (the consumer's address is
the view's), byte-exact both ways, alive after free and shutdown, and nothing leaks."""

from __future__ import annotations

import gc
import os
import resource
from typing import Any

import numpy as np
import pytest

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import InteropError, InvalidHandleError, OutOfBoundsError
from exo_gpu_plugins.interop import (
    DLPACK_DTYPES,
    DeviceKind,
    TensorView,
    live_exports,
    read_dlpack_bytes,
)
from tests.interop.conftest import device_of, make_backend, require_cpu_views, require_torch

PATTERN = bytes((i * 7 + 3) % 256 for i in range(4096))


async def _filled(backend: GPUBackend[Any], size: int = 4096) -> Any:
    require_cpu_views(backend)
    handle = await backend.allocate(device_of(backend), size)
    await backend.copy_to_device(PATTERN[:size], handle)
    return handle


async def test_numpy_view_is_the_memory_itself(backend: GPUBackend[Any]) -> None:
    handle = await _filled(backend)
    view = await backend.export_tensor(handle, device="cpu")
    array = np.from_dlpack(view)
    assert array.ctypes.data == view.data_pointer, "numpy copied instead of viewing in place"
    assert array.tobytes() == PATTERN
    array[:4] = [1, 2, 3, 4]  # the consumer writes; the backend reads it
    assert await backend.copy_from_device(handle, 0, 4) == bytes([1, 2, 3, 4])
    await backend.copy_to_device(b"\xff\xfe", handle, 10)  # the backend writes; the view sees it
    assert array[10] == 0xFF and array[11] == 0xFE


async def test_torch_cpu_view_is_the_memory_itself(backend: GPUBackend[Any]) -> None:
    torch = require_torch()
    handle = await _filled(backend)
    view = await backend.export_tensor(handle, dtype="I32", shape=(32, 32), device="cpu")
    tensor = torch.from_dlpack(view)
    assert tensor.data_ptr() == view.data_pointer, "torch copied instead of viewing in place"
    assert tensor.shape == (32, 32) and tensor.dtype == torch.int32
    assert tensor.numpy().tobytes() == PATTERN
    tensor.add_(1)
    expected = np.frombuffer(PATTERN, dtype=np.int32) + 1
    assert await backend.copy_from_device(handle, 0, 4096) == expected.tobytes()


async def test_offset_shape_and_both_capsule_versions(backend: GPUBackend[Any]) -> None:
    handle = await _filled(backend)
    view = await backend.export_tensor(handle, dtype="U16", shape=(4, 8), offset_bytes=64)
    assert read_dlpack_bytes(view) == PATTERN[64 : 64 + 64]
    legacy = np.from_dlpack(_LegacyOnly(view))
    assert legacy.tobytes() == PATTERN[64:128] and legacy.shape == (4, 8)
    rest = await backend.export_tensor(handle, dtype="F32", offset_bytes=4000)
    assert np.from_dlpack(rest).shape == (24,)


class _LegacyOnly:
    """A producer as seen by a consumer that knows only unversioned capsules."""

    def __init__(self, view: TensorView) -> None:
        self._view = view

    def __dlpack__(self, **kwargs: object) -> object:
        return self._view.__dlpack__()

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._view.__dlpack_device__()


@pytest.mark.parametrize("dtype", sorted(DLPACK_DTYPES))
async def test_every_dtype_reaches_torch(backend: GPUBackend[Any], dtype: str) -> None:
    torch = require_torch()
    handle = await _filled(backend, 64)
    view = await backend.export_tensor(handle, dtype=dtype, device="cpu")
    tensor = torch.from_dlpack(view)
    assert tensor.data_ptr() == view.data_pointer
    assert tensor.view(torch.uint8).numpy().tobytes() == PATTERN[:64]


@pytest.mark.parametrize("dtype", ["F4", "F6_E2M3", "Q8", "bf16"])
async def test_dtype_without_dlpack_form_is_named(backend: GPUBackend[Any], dtype: str) -> None:
    handle = await backend.allocate(device_of(backend), 64)
    why = "no DLPack form" if dtype.startswith("F") else "not a safetensors dtype name"
    with pytest.raises(InteropError, match=rf"{dtype}.*{why}"):
        await backend.export_tensor(handle, dtype=dtype)


def test_interop_error_is_where_users_look() -> None:
    import exo_gpu_plugins
    import exo_gpu_plugins.interop

    assert exo_gpu_plugins.InteropError is exo_gpu_plugins.interop.InteropError is InteropError


async def test_bad_arguments(backend: GPUBackend[Any]) -> None:
    handle = await backend.allocate(device_of(backend), 64)
    with pytest.raises(OutOfBoundsError):
        await backend.export_tensor(handle, dtype="F32", shape=(17,))
    with pytest.raises(OutOfBoundsError):
        await backend.export_tensor(handle, dtype="U8", shape=(8,), offset_bytes=60)
    with pytest.raises(ValueError, match="whole number"):
        await backend.export_tensor(handle, dtype="F32", offset_bytes=2)
    with pytest.raises(TypeError):
        await backend.export_tensor(handle, dtype=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shape\[0\] must be from 0 to 2\*\*63 - 1"):
        await backend.export_tensor(handle, dtype="U8", shape=(-1,))
    with pytest.raises(ValueError, match="device"):
        await backend.export_tensor(handle, device="metal")  # type: ignore[arg-type]
    require_cpu_views(backend)
    view = await backend.export_tensor(handle)
    with pytest.raises(BufferError):
        view.__dlpack__(copy=True)
    with pytest.raises(BufferError):
        view.__dlpack__(dl_device=(2, 0))


async def test_shapes_dlpack_cannot_carry_are_refused(backend: GPUBackend[Any]) -> None:
    """A size past int64 (DLPack's) is refused, not wrapped around, even where a zero elsewhere
    makes the view empty; a shape of 20,000 huge sizes is refused at once, in a short message."""
    handle = await backend.allocate(device_of(backend), 64)
    for shape, position in (((0, 2**63), 1), ((0, 2**70), 1), ((2**63, 0), 0)):
        with pytest.raises(ValueError, match=rf"shape\[{position}\] must be from 0 to 2\*\*63 - 1"):
            await backend.export_tensor(handle, dtype="U8", shape=shape)
    for shape in ((True, 4), (4.0,), ("4",), (None,)):
        with pytest.raises(TypeError, match=r"shape\[0\] must be an int"):
            await backend.export_tensor(handle, dtype="U8", shape=shape)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="int64 strides") as caught:
        await backend.export_tensor(handle, dtype="U8", shape=[2**63 - 1] * 20_000)
    assert "20000 dimensions" in str(caught.value) and len(str(caught.value)) < 300
    with pytest.raises(OutOfBoundsError) as out_of_bounds:
        await backend.export_tensor(handle, dtype="U8", shape=[1] * 19_999 + [65])
    assert "20000 dimensions" in str(out_of_bounds.value) and len(str(out_of_bounds.value)) < 300
    with pytest.raises(ValueError, match="must be from 0"):
        TensorView(
            address=0, byte_offset=0, dtype="U8", shape=(-2,), device=(DeviceKind.CPU, 0), owner=None
        )


async def test_a_scalar_view_must_fit_too(backend: GPUBackend[Any]) -> None:
    """The empty shape is one element: refused where that element would reach past the end."""
    require_cpu_views(backend)
    handle = await backend.allocate(device_of(backend), 8)
    for offset in (6, 8):
        with pytest.raises(OutOfBoundsError):
            await backend.export_tensor(handle, dtype="F32", shape=(), offset_bytes=offset)
    view = await backend.export_tensor(handle, dtype="F32", shape=(), offset_bytes=4)
    assert view.shape == () and np.from_dlpack(view).shape == ()


async def test_an_empty_shape_whose_strides_overflow_is_refused(backend: GPUBackend[Any]) -> None:
    """(0, 2**62, 4) holds no element, but its first stride is 2**64 bytes' worth: numpy refuses
    it and torch overflows on it, so it never becomes a view."""
    handle = await backend.allocate(device_of(backend), 64)
    with pytest.raises(ValueError, match="int64 strides"):
        await backend.export_tensor(handle, dtype="U8", shape=(0, 2**62, 4))
    with pytest.raises(ValueError, match="int64 strides"):
        await backend.export_tensor(handle, dtype="F32", shape=(0, 2**61))
    require_cpu_views(backend)
    view = await backend.export_tensor(handle, dtype="F32", shape=(0, 2**60))  # 2**62 bytes: fits
    assert np.from_dlpack(view).shape == (0, 2**60)


async def test_a_shape_of_many_dimensions(backend: GPUBackend[Any]) -> None:
    """Twelve sizes of 2 view 4,096 bytes like any other shape (the checks' short path ends at 8)."""
    handle = await _filled(backend)
    view = await backend.export_tensor(handle, dtype="U8", shape=(2,) * 12)
    assert np.from_dlpack(view).tobytes() == PATTERN


async def test_numpy_integers_are_sizes(backend: GPUBackend[Any]) -> None:
    """A shape of numpy integers (as `array.shape` arithmetic gives) is taken like ints."""
    handle = await _filled(backend, 64)
    view = await backend.export_tensor(handle, dtype="U16", shape=(np.int64(4), np.uint8(8)))
    assert view.shape == (4, 8) and all(type(n) is int for n in view.shape)
    assert np.from_dlpack(view).tobytes() == PATTERN[:64]


async def test_cuda_view_without_cuda_says_why(backend: GPUBackend[Any]) -> None:
    if "cuda" in backend.capabilities(device_of(backend)).export_kinds:
        pytest.skip("this device has CUDA: tests/interop/test_cuda.py covers it")
    handle = await backend.allocate(device_of(backend), 64, exportable=True)
    with pytest.raises(InteropError, match=rf"{device_of(backend)} makes no CUDA views"):
        await backend.export_tensor(handle, device="cuda")


async def test_dlpack_arguments_of_the_wrong_kind(backend: GPUBackend[Any]) -> None:
    """What a consumer passes to __dlpack__ is checked: TypeError for the wrong kind of value,
    BufferError for a device or copy the view cannot give."""
    require_cpu_views(backend)
    view = await backend.export_tensor(await backend.allocate(device_of(backend), 64))
    for kwargs in ({"max_version": ()}, {"max_version": 1}, {"dl_device": 5}, {"copy": "no"}):
        with pytest.raises(TypeError, match=next(iter(kwargs))):
            view.__dlpack__(**kwargs)
    with pytest.raises(BufferError):
        view.__dlpack__(dl_device=(2, 0))
    view.__dlpack__(max_version=(1, 0), dl_device=(1, 0), copy=False)


async def test_host_buffer_offsets_are_checked_like_exports(backend: GPUBackend[Any]) -> None:
    buffer = await backend.register_host_buffer(device_of(backend), bytearray(PATTERN[:64]))
    for offset, error in (("1", TypeError), (True, TypeError), (1.0, TypeError), (-1, ValueError)):
        with pytest.raises(error, match="offset_bytes"):
            buffer.as_tensor(offset_bytes=offset)  # type: ignore[arg-type]
    with pytest.raises(OutOfBoundsError):
        buffer.as_tensor(offset_bytes=65)
    view = buffer.as_tensor(offset_bytes=np.int64(60))
    assert view.byte_offset == 60 and read_dlpack_bytes(view) == PATTERN[60:64]
    wide = TensorView(
        address=0, byte_offset=0, dtype="U8", shape=[1] * 5000, device=(DeviceKind.CPU, 0), owner=None
    )
    assert len(repr(wide)) < 100
    await backend.release_host_buffer(buffer)


@pytest.mark.parametrize("ending", ["deallocate", "shutdown"])
async def test_memory_outlives_free_and_shutdown_while_viewed(backend_name: str, ending: str) -> None:
    torch = require_torch()
    backend = make_backend(backend_name)
    await backend.initialize()
    device = device_of(backend)
    if "cpu" not in backend.capabilities(device).export_kinds:
        await backend.shutdown()
        pytest.skip("no 'cpu' export kind here: test_cuda.py covers this")
    handle = await _filled(backend)
    array = np.from_dlpack(await backend.export_tensor(handle))
    tensor = torch.from_dlpack(await backend.export_tensor(handle, dtype="F32"))
    if ending == "deallocate":
        await backend.deallocate(handle)
        # Memory handed out next must not be the viewed memory.
        for _ in range(8):
            other = await backend.allocate(device, 4096)
            await backend.copy_to_device(b"\x55" * 4096, other)
    await backend.shutdown()
    assert array.tobytes() == PATTERN, "memory a view still uses was freed or reused"
    assert tensor.numpy().tobytes() == PATTERN
    array[0] = 7  # still writable memory, not a dangling mapping
    assert tensor.view(torch.uint8)[0].item() == 7


async def test_a_free_while_a_view_waits_for_the_device(
    backend: GPUBackend[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deallocate that runs while export_tensor awaits the device's work: the export is refused
    naming the handle, on every backend alike (the host backend used to hand out a view of the
    freed allocation; Vulkan said "unknown or freed allocation 1")."""
    handle = await backend.allocate(device_of(backend), 4096, exportable=True)
    waited = backend._synchronize

    async def freeing(index: int) -> None:
        await waited(index)
        await backend.deallocate(handle)

    monkeypatch.setattr(backend, "_synchronize", freeing)
    message = f"handle '{handle.handle_id}' was freed .* while its view waited for the device's work"
    with pytest.raises(InvalidHandleError, match=message):
        await backend.export_tensor(handle, device="auto")
    assert backend.live_handles() == []


async def test_host_buffer_views(backend: GPUBackend[Any]) -> None:
    buffer = await backend.allocate_host_buffer(device_of(backend), 4096)
    buffer.view[:] = PATTERN
    array = np.from_dlpack(buffer.as_tensor(dtype="U8"))
    assert array.tobytes() == PATTERN
    assert array.ctypes.data == buffer.as_tensor().data_pointer
    await backend.release_host_buffer(buffer)
    assert array.tobytes() == PATTERN  # released host memory stays valid while viewed


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def test_a_thousand_export_drop_cycles_leak_nothing(backend: GPUBackend[Any]) -> None:
    torch = require_torch()
    require_cpu_views(backend)
    device = device_of(backend)

    async def cycle() -> None:
        handle = await backend.allocate(device, 64 * 1024)
        view = await backend.export_tensor(handle, dtype="F32")
        tensor = torch.from_dlpack(view)
        array = np.from_dlpack(view)
        assert tensor.shape == array.shape
        await backend.deallocate(handle)
        del tensor, array, view

    for _ in range(50):  # warm-up: allocator pools, torch's first calls
        await cycle()
    gc.collect()
    fds, rss, exports = _open_fds(), _rss_kib(), live_exports()
    for _ in range(1000):
        await cycle()
    gc.collect()
    assert live_exports() == exports, "a consumer's capsule was never released"
    assert _open_fds() == fds, "export/drop cycles leak file descriptors"
    grown = _rss_kib() - rss
    assert grown < 16 * 1024, f"RSS grew by {grown} KiB over 1000 export/drop cycles"


async def test_an_offset_past_the_end_is_refused(backend: GPUBackend[Any]) -> None:
    handle = await backend.allocate(device_of(backend), 64)
    with pytest.raises(OutOfBoundsError, match="past"):
        await backend.export_tensor(handle, offset_bytes=65)


async def test_capsules_survive_a_pending_exception_and_are_released(backend: GPUBackend[Any]) -> None:
    """A consumer drops a capsule (or its tensor) while an exception is being raised: the deleters
    must neither crash nor deadlock nor lose the exception, and the memory is let go."""
    torch = require_torch()
    handle = await _filled(backend, 64)
    gc.collect()
    before = live_exports()
    view = await backend.export_tensor(handle, dtype="BF16")
    with pytest.raises(ValueError, match="invalid literal"):
        (torch.from_dlpack(view), int("x"))
    with pytest.raises(ValueError, match="invalid literal"):
        (view.__dlpack__(), int("x"))
    with pytest.raises((RuntimeError, BufferError, TypeError)):
        np.from_dlpack(view)  # numpy has no bfloat16: its own error, not a lost one
    del view
    gc.collect()
    assert live_exports() == before, "a capsule's owner was never released"
