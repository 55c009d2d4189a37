"""Loading: byte-exact results on every backend and packing, few copies, progress, and nothing left
allocated when a load fails or is cancelled."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import CheckpointError, InvalidHandleError, OutOfMemoryError
from exo_gpu_plugins.weights import (
    LayerRange,
    LoadedWeights,
    LoadProgress,
    load_plan,
    load_weights,
    plan_checkpoint,
)
from exo_gpu_plugins.weights.synthetic import LlamaShape, tensor_bytes, write_llama, write_safetensors


def file_tensors(path: Path) -> dict[str, tuple[int, int]]:
    """Tensor name -> absolute (begin, end) in the file, read with nothing but json."""
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    header.pop("__metadata__", None)
    return {
        name: (8 + length + v["data_offsets"][0], 8 + length + v["data_offsets"][1])
        for name, v in header.items()
    }


async def check_exact(backend: GPUBackend[Any], loaded: LoadedWeights) -> None:
    """Every tensor reads back as its bytes in the file (and as the generator made them)."""
    files = {f: (Path(f).read_bytes(), file_tensors(Path(f))) for f in loaded.files}
    for name, tensor in loaded.tensors.items():
        raw, offsets = files[tensor.file]
        begin, end = offsets[name]
        assert (tensor.file_offset, tensor.size_bytes) == (begin, end - begin)
        got = await loaded.read(backend, name)
        assert got == raw[begin:end], name
        assert got == tensor_bytes(name, end - begin), name
    # Tensors of one allocation never overlap and lie inside it; each keeps its file alignment.
    by_handle: dict[str, list[tuple[int, int]]] = {}
    for tensor in loaded.tensors.values():
        if tensor.handle is None:
            continue
        assert tensor.offset_bytes + tensor.size_bytes <= tensor.handle.size_bytes
        by_handle.setdefault(tensor.handle.handle_id, []).append(
            (tensor.offset_bytes, tensor.offset_bytes + tensor.size_bytes)
        )
    for spans in by_handle.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert {h.handle_id for h in loaded.handles} == set(by_handle)


def tensors_by_allocation(loaded: LoadedWeights) -> list[list[str]]:
    """The loaded tensors' names grouped by the allocation holding them, allocations in order of
    their first tensor."""
    groups: dict[str, list[str]] = {}
    for name, tensor in loaded.tensors.items():
        assert tensor.handle is not None
        groups.setdefault(tensor.handle.handle_id, []).append(name)
    return list(groups.values())


@pytest.mark.parametrize("pack", ["file", "tensor"])
@pytest.mark.parametrize("layers", [None, LayerRange(0, 2), LayerRange(2, 4), LayerRange(4, 6)], ids=str)
async def test_byte_exact(
    sharded: Path,
    backend: GPUBackend[Any],
    device: str,
    pack: Any,
    layers: LayerRange | None,
) -> None:
    before = (await backend.get_device_memory_info(device)).used_bytes
    loaded = await load_weights(backend, device, sharded, layers=layers, pack=pack)
    await check_exact(backend, loaded)
    nonempty = [t for t in loaded.tensors.values() if t.size_bytes]
    if pack == "tensor":
        assert len(loaded.handles) == len(nonempty)
        assert all(
            t.offset_bytes == 0 and t.handle is not None and t.handle.size_bytes == t.size_bytes
            for t in nonempty
        )
    else:
        assert len(loaded.handles) == len({t.file for t in nonempty})
    assert loaded.total_bytes == sum(t.size_bytes for t in loaded.tensors.values())
    assert loaded.allocated_bytes == sum(h.size_bytes for h in loaded.handles) >= loaded.total_bytes
    assert loaded.device_id == device and loaded.pack == pack and loaded.seconds > 0
    assert {h.handle_id for h in backend.live_handles()} >= {h.handle_id for h in loaded.handles}
    await loaded.deallocate(backend)
    assert backend.live_handles() == []
    assert (await backend.get_device_memory_info(device)).used_bytes == before


async def test_alignment_kept(single: Path, backend: GPUBackend[Any], device: str) -> None:
    """Each tensor sits at an allocation offset congruent to its data-section offset modulo 64."""
    loaded = await load_weights(backend, device, single, layers=LayerRange(1, 3))
    length = int.from_bytes(single.read_bytes()[:8], "little")
    for tensor in loaded.tensors.values():
        assert tensor.offset_bytes % 64 == (tensor.file_offset - 8 - length) % 64
    await check_exact(backend, loaded)
    await loaded.deallocate(backend)


async def test_one_copy_per_run(single: Path, backend: GPUBackend[Any], device: str) -> None:
    calls: list[tuple[int, int, int]] = []
    real = backend.copy_file_to_device  # type: ignore[attr-defined]

    async def spy(
        src: Any, handle: Any, offset: int = 0, *, file_offset: int = 0, size_bytes: int | None = None
    ) -> int:
        assert size_bytes is not None
        calls.append((file_offset, size_bytes, offset))
        return int(await real(src, handle, offset, file_offset=file_offset, size_bytes=size_bytes))

    backend.copy_file_to_device = spy  # type: ignore[attr-defined]
    whole = await load_weights(backend, device, single)
    assert len(calls) == 1  # the whole data section is one run
    assert calls[0][1] == whole.total_bytes == single.stat().st_size - calls[0][0]
    await whole.deallocate(backend)

    # One layer: its nine tensors are adjacent in the file (sorted by name), so one run.
    calls.clear()
    part = await load_weights(backend, device, single, layers=LayerRange(3, 4))
    assert len(calls) == 1 and calls[0][1] == part.total_bytes
    await part.deallocate(backend)

    # Layers 0 and 2: layer 1 lies between them in the file, so two runs.
    calls.clear()
    two = await load_weights(
        backend,
        device,
        single,
        select=lambda n: n.startswith(("model.layers.0.", "model.layers.2.")),
    )
    assert len(calls) == 2
    assert sum(c[1] for c in calls) == two.total_bytes
    await check_exact(backend, two)
    await two.deallocate(backend)


async def test_zeroed_only_where_padding_remains(
    single: Path,
    tmp_path: Path,
    backend: GPUBackend[Any],
    device: str,
) -> None:
    """An allocation the copies overwrite whole is not zeroed first; one with alignment padding
    between runs is, so the padding reads as zeros (never as bytes of memory freed before)."""
    asked: list[bool] = []
    real = backend.allocate

    async def spy(device_id: str, size: int, *, zeroed: bool = True) -> Any:
        asked.append(zeroed)
        return await real(device_id, size, zeroed=zeroed)

    backend.allocate = spy  # type: ignore[method-assign]
    whole = await load_weights(backend, device, single)
    assert asked == [False]
    await whole.deallocate(backend)

    # Without "b" (33 bytes), "c" keeps its offset modulo 64: 33 bytes of padding follow "a".
    # Dirty memory first, so a missing zero-fill would show there.
    odd = tmp_path / "odd.safetensors"
    write_safetensors(odd, [("a", "U8", (100,)), ("b", "U8", (33,)), ("c", "U8", (300,))])
    dirty = await real(device, 4096)
    await backend.copy_to_device(b"\xa5" * 4096, dirty)
    await backend.deallocate(dirty)
    asked.clear()
    two = await load_weights(backend, device, odd, select=lambda n: n != "b")
    assert asked == [True]
    (handle,) = two.handles
    ends = sorted((t.offset_bytes, t.offset_bytes + t.size_bytes) for t in two.tensors.values())
    content = await backend.copy_from_device(handle, 0, handle.size_bytes)
    gaps = [(end, begin) for (_, end), (begin, _) in itertools.pairwise(ends) if begin > end]
    assert gaps, "the two runs should be separated by alignment padding"
    for end, begin in gaps:
        assert content[end:begin] == bytes(begin - end)
    await check_exact(backend, two)
    await two.deallocate(backend)


def test_fills_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether a planned allocation may skip its zero fill: only when its steps cover it exactly."""
    from dataclasses import replace

    from exo_gpu_plugins.weights import plan as plan_module

    monkeypatch.setattr(plan_module, "MAX_COPY_BYTES", 4096)
    path = tmp_path / "odd.safetensors"
    write_safetensors(path, [("a", "U8", (10000,)), ("b", "U8", (33,)), ("c", "U8", (5000,))])
    (whole,) = plan_checkpoint(path).allocations
    assert len(whole.steps) > 2 and whole.fills_whole  # split in 4096-byte steps, no gap
    (gapped,) = plan_checkpoint(path, select=lambda n: n != "b").allocations
    assert not gapped.fills_whole  # "c" keeps its offset modulo 64: padding after "a"
    assert all(a.fills_whole for a in plan_checkpoint(path, pack="tensor").allocations)
    # A hand-made plan whose steps overlap (and so leave the end unwritten) is not whole.
    first = whole.steps[0]
    overlapping = replace(
        whole, steps=(first, *(replace(t, offset=t.offset - 1) for t in whole.steps[1:]))
    )
    assert not overlapping.fills_whole


async def test_progress(sharded: Path, backend: GPUBackend[Any], device: str) -> None:
    reports: list[LoadProgress] = []
    loaded = await load_weights(backend, device, sharded, pack="tensor", progress=reports.append)
    assert len(reports) == len(loaded.handles) + 1  # once allocated, then after each copy
    assert reports[0].bytes_done == 0 and reports[0].tensors_done == 0
    for a, b in itertools.pairwise(reports):
        assert (
            b.bytes_done > a.bytes_done and b.tensors_done >= a.tensors_done and b.seconds >= a.seconds
        )
    last = reports[-1]
    assert (last.bytes_done, last.bytes_total) == (loaded.total_bytes, loaded.total_bytes)
    assert last.tensors_done == last.tensors_total == len(loaded.tensors)
    assert all(r.bytes_total == loaded.total_bytes for r in reports)
    await loaded.deallocate(backend)


async def test_large_runs_are_split(
    tmp_path: Path,
    backend: GPUBackend[Any],
    device: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from exo_gpu_plugins.weights import plan as plan_module

    monkeypatch.setattr(plan_module, "MAX_COPY_BYTES", 4096)
    path = tmp_path / "big.safetensors"
    write_safetensors(path, [("a", "U8", (10000,)), ("b", "U8", (3,)), ("c", "U8", (5000,))])
    reports: list[LoadProgress] = []
    loaded = await load_weights(backend, device, path, progress=reports.append)
    assert [r.bytes_done for r in reports] == [0, 4096, 8192, 12288, 15003]
    assert [r.tensors_done for r in reports] == [0, 0, 0, 2, 3]
    await check_exact(backend, loaded)
    await loaded.deallocate(backend)


async def test_empty_tensors(tmp_path: Path, backend: GPUBackend[Any], device: str) -> None:
    path = tmp_path / "e.safetensors"
    write_safetensors(path, [("a", "F32", (0, 4)), ("b", "F32", (3,)), ("c", "I8", (0,))])
    for pack in ("file", "tensor"):
        reports: list[LoadProgress] = []
        loaded = await load_weights(backend, device, path, pack=pack, progress=reports.append)  # type: ignore[arg-type]
        assert loaded.tensors["a"].handle is None and loaded.tensors["a"].shape == (0, 4)
        assert await loaded.read(backend, "c") == b""
        assert len(loaded.handles) == 1
        assert reports[0].tensors_done == 2 and reports[-1].tensors_done == 3
        await check_exact(backend, loaded)
        await loaded.deallocate(backend)


async def test_free_twice(single: Path, backend: GPUBackend[Any], device: str) -> None:
    loaded = await load_weights(backend, device, single, pack="tensor")
    await loaded.deallocate(backend)
    with pytest.raises(InvalidHandleError):
        await loaded.deallocate(backend)
    assert backend.live_handles() == []


async def test_failing_progress_frees(sharded: Path, backend: GPUBackend[Any], device: str) -> None:
    def fail(report: LoadProgress) -> None:
        if report.bytes_done:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        await load_weights(backend, device, sharded, progress=fail)
    assert backend.live_handles() == []


async def test_allocation_failure_frees(sharded: Path, backend: GPUBackend[Any], device: str) -> None:
    real = backend.allocate
    made = 0

    async def allocate(device_id: str, size: int, *, zeroed: bool = True) -> Any:
        nonlocal made
        made += 1
        if made == 5:
            raise OutOfMemoryError("device full")
        return await real(device_id, size, zeroed=zeroed)

    backend.allocate = allocate  # type: ignore[method-assign]
    plan = plan_checkpoint(sharded, pack="tensor")
    with pytest.raises(OutOfMemoryError) as failed:
        await load_weights(backend, device, sharded, pack="tensor")
    assert made == 5
    # The message names the file whose allocation failed and how far the load had come.
    fifth = plan.allocations[4]
    made_bytes = sum(a.size_bytes for a in plan.allocations[:4])
    assert str(failed.value).startswith(
        f"{fifth.file}: allocation 5 of {len(plan.allocations)} ({fifth.size_bytes} bytes) failed "
        f"after {made_bytes} of the load's {plan.allocated_bytes} bytes were allocated"
    )
    assert str(failed.value).endswith(": device full")
    assert backend.live_handles() == []


async def test_too_large_for_the_device(
    sharded: Path,
    backend: GPUBackend[Any],
    device: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real OutOfMemoryError from the backend: a plan whose allocation no device can hold."""
    plan = plan_checkpoint(sharded)
    huge = plan.allocations[1].__class__(
        plan.allocations[1].file, plan.allocations[1].identity, 1 << 62, plan.allocations[1].steps, 0
    )
    broken = plan.__class__(
        plan.tensors,
        (plan.allocations[0], huge, plan.allocations[2]),
        plan.files,
        plan.total_bytes,
        plan.allocated_bytes,
        plan.pack,
        plan.layers,
    )
    with pytest.raises(OutOfMemoryError):
        await load_plan(backend, device, broken)
    assert backend.live_handles() == []


async def test_cancel_while_copying(
    sharded: Path, backend: GPUBackend[Any], device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled during its copies: each copy in flight (two here: one per shard, of three) runs
    to its end (it may be writing into the memory), the third is never started, then everything
    is freed and CancelledError comes out."""
    from exo_gpu_plugins.weights import loader as loader_module

    monkeypatch.setattr(loader_module, "_COPIES_IN_FLIGHT", 2)
    real = backend.copy_file_to_device  # type: ignore[attr-defined]
    started = asyncio.Event()
    release = asyncio.Event()
    finished: list[int] = []

    async def slow(*args: Any, **kwargs: Any) -> int:
        started.set()
        await release.wait()
        result = int(await real(*args, **kwargs))
        finished.append(result)
        return result

    backend.copy_file_to_device = slow  # type: ignore[attr-defined]

    task = asyncio.ensure_future(load_weights(backend, device, sharded))
    await started.wait()
    # Two shards' copies in flight, and the third allocation made while they fill.
    await asyncio.sleep(0.05)
    assert len(backend.live_handles()) == 3
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # waiting for the copies in flight
    assert len(backend.live_handles()) == 3
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(finished) == 2
    assert backend.live_handles() == []


async def test_cancel_while_allocating(sharded: Path, backend: GPUBackend[Any], device: str) -> None:
    """Cancelled while an allocation is being made: it completes, and is freed with the rest."""
    real = backend.allocate
    made: list[Any] = []
    gate = asyncio.Event()

    async def allocate(device_id: str, size: int, *, zeroed: bool = True) -> Any:
        if made:
            gate.set()
            await asyncio.sleep(0.05)
        handle = await real(device_id, size, zeroed=zeroed)
        made.append(handle)
        return handle

    backend.allocate = allocate  # type: ignore[method-assign]

    task = asyncio.ensure_future(load_weights(backend, device, sharded, pack="tensor"))
    await gate.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(made) == 2  # the one in flight was finished, not abandoned
    assert backend.live_handles() == []


async def test_cancel_between_copies(sharded: Path, backend: GPUBackend[Any], device: str) -> None:
    task: asyncio.Future[LoadedWeights] | None = None
    seen = 0

    def progress(report: LoadProgress) -> None:
        nonlocal seen
        seen += 1
        if seen == 4 and task is not None:
            task.cancel()

    task = asyncio.ensure_future(
        load_weights(backend, device, sharded, pack="tensor", progress=progress)
    )
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == 4
    assert backend.live_handles() == []


async def test_file_changed_after_planning(
    tmp_path: Path, backend: GPUBackend[Any], device: str
) -> None:
    path = write_llama(tmp_path, LlamaShape(layers=2))
    plan = plan_checkpoint(path)
    write_llama(tmp_path, LlamaShape(layers=2), seed=1)
    os.utime(path, ns=(1, 1))
    with pytest.raises(CheckpointError, match="changed after its header was checked"):
        await load_plan(backend, device, plan)
    assert backend.live_handles() == []


async def test_bad_arguments(single: Path, backend: GPUBackend[Any], device: str) -> None:
    from exo_gpu_plugins.errors import DeviceNotFoundError

    with pytest.raises(DeviceNotFoundError):
        await load_weights(backend, f"{backend.name}:99", single)
    with pytest.raises(ValueError, match="pack"):
        await load_weights(backend, device, single, pack="layer")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="LayerRange"):
        await load_weights(backend, device, single, layers=(0, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="GPUBackend"):
        await load_weights(object(), device, single)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await load_weights(backend, device, [single, 3])  # type: ignore[list-item]
    assert backend.live_handles() == []


async def test_device_allocation_cap(sharded: Path, backend: GPUBackend[Any], device: str) -> None:
    """Where one allocation is capped (lavapipe: 2 GiB), a file's tensors take several."""
    real = backend.capabilities
    cap = 40000  # above the largest tensor (32 KiB), below every shard

    def capped(device_id: str) -> Any:
        return real(device_id).model_copy(update={"max_allocation_bytes": cap})

    backend.capabilities = capped  # type: ignore[method-assign]
    loaded = await load_weights(backend, device, sharded)
    assert all(h.size_bytes <= cap for h in loaded.handles)
    assert len(loaded.handles) > len(loaded.files)
    await check_exact(backend, loaded)
    await loaded.deallocate(backend)

    cap = 30000  # below the embedding and the head
    with pytest.raises(OutOfMemoryError, match=r"lm_head\.weight|embed_tokens"):
        await load_weights(backend, device, sharded)
    with pytest.raises(OutOfMemoryError, match="more than the device allows"):
        await load_weights(backend, device, sharded, pack="tensor")
    assert backend.live_handles() == []


async def test_verify_finds_a_changed_byte(sharded: Path, backend: GPUBackend[Any], device: str) -> None:
    loaded = await load_weights(backend, device, sharded, layers=LayerRange(2, 4))
    assert await loaded.verify(backend) == []
    name = "model.layers.3.self_attn.o_proj.weight"
    tensor = loaded.tensors[name]
    assert tensor.handle is not None
    last = tensor.offset_bytes + tensor.size_bytes - 1
    original = await backend.copy_from_device(tensor.handle, last, 1)
    await backend.copy_to_device(bytes([original[0] ^ 1]), tensor.handle, last)
    assert await loaded.verify(backend) == [name]
    await loaded.deallocate(backend)


async def test_only_empty_tensors(tmp_path: Path, backend: GPUBackend[Any], device: str) -> None:
    path = tmp_path / "empty.safetensors"
    write_safetensors(path, [("a", "F32", (0,)), ("b", "BF16", (4, 0))])
    reports: list[LoadProgress] = []
    loaded = await load_weights(backend, device, path, progress=reports.append)
    assert loaded.handles == () and loaded.total_bytes == 0 and set(loaded.tensors) == {"a", "b"}
    assert [(r.bytes_done, r.tensors_done, r.tensors_total) for r in reports] == [(0, 2, 2)]
    await loaded.deallocate(backend)


async def test_a_large_file_fills_allocations_of_about_a_piece_each(
    tmp_path: Path, backend: GPUBackend[Any], device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file's tensors go into allocations of about ALLOCATION_PIECE_BYTES (the next one is
    made while the one before fills), split at tensor boundaries; a larger tensor gets its own."""
    from exo_gpu_plugins.weights import plan as plan_module

    monkeypatch.setattr(plan_module, "ALLOCATION_PIECE_BYTES", 8192)
    path = tmp_path / "pieces.safetensors"
    sizes = [3000, 3000, 3000, 20000, 100, 5000, 5000]
    write_safetensors(path, [(f"t{i}", "U8", (n,)) for i, n in enumerate(sizes)])
    loaded = await load_weights(backend, device, path)
    groups = tensors_by_allocation(loaded)
    assert sorted(sorted(g) for g in groups) == [
        ["t0", "t1"],
        ["t2"],
        ["t3"],
        ["t4", "t5"],
        ["t6"],
    ]
    assert [h.size_bytes <= 8192 + 64 for h in loaded.handles] == [True, True, False, True, True]
    await check_exact(backend, loaded)
    await loaded.deallocate(backend)


async def test_the_first_allocation_is_small(
    tmp_path: Path, backend: GPUBackend[Any], device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan's first allocation holds at most FIRST_ALLOCATION_BYTES (nothing overlaps its
    making); the following ones are pieces again, and so is the first of a second file."""
    from exo_gpu_plugins.weights import plan as plan_module

    monkeypatch.setattr(plan_module, "ALLOCATION_PIECE_BYTES", 8192)
    monkeypatch.setattr(plan_module, "FIRST_ALLOCATION_BYTES", 4096)
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_safetensors(first, [(f"a{i}", "U8", (3000,)) for i in range(4)])
    write_safetensors(second, [(f"b{i}", "U8", (3000,)) for i in range(3)])
    loaded = await load_weights(backend, device, [first, second])
    groups = tensors_by_allocation(loaded)
    assert [sorted(g) for g in groups] == [["a0"], ["a1", "a2"], ["a3"], ["b0", "b1"], ["b2"]]
    await check_exact(backend, loaded)
    await loaded.deallocate(backend)


async def test_a_failing_import_frees_its_allocation(
    tmp_path: Path, backend: GPUBackend[Any], device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An exportable allocation with a copy large enough for CUDA's copy engine is imported
    # before its copies; when that raises, the allocation is freed with the rest.
    path = write_llama(tmp_path, LlamaShape.for_size(64 << 20))

    async def failing(handle: object) -> None:
        raise RuntimeError("the import failed")

    monkeypatch.setattr(backend, "prepare_export", failing)
    with pytest.raises(RuntimeError, match="the import failed"):
        await load_weights(backend, device, path, exportable=True)
    assert backend.live_handles() == []
