"""One checkpoint over two devices of different backends (lavapipe's vulkan:0 and host:0, exo's
heterogeneous case): byte-exact on both, each file read once, refused before allocating when a
device is short, and nothing left on either device (or open) whatever ends the load."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import OutOfMemoryError
from exo_gpu_plugins.host.backend import HostBackend
from exo_gpu_plugins.weights import (
    DeviceRoom,
    LayerRange,
    PlacedWeights,
    PlacementProgress,
    SplitRequest,
    load_across,
    load_placement,
    place_checkpoint,
    plan_across,
    spread,
)
from exo_gpu_plugins.weights import format as header_format
from exo_gpu_plugins.weights.synthetic import LlamaShape, tensor_bytes, write_llama
from tests.backends import FACTORIES, _vulkan_reason

Pairs = list[tuple[GPUBackend[Any], str]]
TIED = LlamaShape(layers=6, tied=True)


@pytest.fixture
async def pairs() -> AsyncIterator[Pairs]:
    reason = _vulkan_reason()
    if reason is not None:
        if os.environ.get("EXO_GPU_REQUIRE_VULKAN") == "1":
            pytest.fail(f"Vulkan required but unavailable: {reason}")
        pytest.skip(reason)
    vulkan, host = FACTORIES["vulkan"](), HostBackend()
    await vulkan.initialize()
    await host.initialize()
    yield [(vulkan, "vulkan:0"), (host, "host:0")]
    await vulkan.shutdown()
    await host.shutdown()


@pytest.fixture(scope="module")
def tied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-layer Llama with tied embeddings (no lm_head) in three shards."""
    return write_llama(tmp_path_factory.mktemp("tied"), TIED, shards=3)


def live(pairs: Pairs) -> list[Any]:
    return [handle for backend, _ in pairs for handle in backend.live_handles()]


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def check_exact(pairs: Pairs, placed: PlacedWeights) -> None:
    """Every tensor of every device reads back as the generator made it, on its own device."""
    for backend, device in pairs:
        loaded = placed.weights[device]
        assert loaded.device_id == device
        assert {h.device_id for h in loaded.handles} == {device}
        for name, tensor in loaded.tensors.items():
            got = await loaded.read(backend, name)
            assert got == tensor_bytes(name, tensor.size_bytes), (device, name)
        assert await loaded.verify(backend) == []


async def test_split_by_memory_byte_exact_on_both(tied: Path, pairs: Pairs) -> None:
    placed = await load_across(pairs, tied)
    await check_exact(pairs, placed)
    vulkan, host = placed.weights["vulkan:0"], placed.weights["host:0"]
    # Together the devices hold every layer once; the tied embedding is on both ends.
    assert vulkan.layers is not None and host.layers is not None
    assert (vulkan.layers.start, vulkan.layers.end, host.layers.start, host.layers.end) == (
        0,
        vulkan.layers.end,
        vulkan.layers.end,
        6,
    )
    assert "model.embed_tokens.weight" in vulkan.tensors and "model.embed_tokens.weight" in host.tensors
    assert "model.norm.weight" in host.tensors and "model.norm.weight" not in vulkan.tensors
    names = set(vulkan.tensors) | set(host.tensors)
    assert len(vulkan.tensors) + len(host.tensors) == len(names) + 1  # only the embedding twice
    await placed.deallocate(pairs)
    assert live(pairs) == []


@pytest.mark.parametrize("threshold", [1, 1 << 62], ids=["imported-first", "imported-beside"])
async def test_exportable_every_allocation_prepared_once(
    tied: Path, pairs: Pairs, monkeypatch: pytest.MonkeyPatch, threshold: int
) -> None:
    # Each exportable allocation, own or shared (the tied embedding), is handed to
    # prepare_export (the CUDA import) exactly once, whichever side of its copies that falls on.
    from exo_gpu_plugins.weights import loader

    monkeypatch.setattr(loader, "CUDA_COPY_MIN_BYTES", threshold)
    prepared: list[str] = []
    for backend, _ in pairs:
        original = backend.prepare_export

        async def counted(handle: Any, original: Any = original) -> None:
            prepared.append(handle.handle_id)
            await original(handle)

        monkeypatch.setattr(backend, "prepare_export", counted)
    placed = await load_across(pairs, tied, exportable=True)
    await check_exact(pairs, placed)
    handles = [h.handle_id for loaded in placed.weights.values() for h in loaded.handles]
    assert sorted(prepared) == sorted(handles)
    await placed.deallocate(pairs)
    assert live(pairs) == []


def test_memory_rule_follows_the_rooms(tied: Path) -> None:
    """Three times the memory, about three times the layers (the ends' extras included)."""
    rooms = [DeviceRoom("a:0", 1 << 30), DeviceRoom("b:0", 3 << 30)]
    plan = place_checkpoint(tied, rooms)
    a, b = plan.devices
    assert (a.layers.start, b.layers.end) == (0, 6) and a.layers.end == b.layers.start
    assert a.total_bytes < b.total_bytes
    assert abs(a.total_bytes / plan.delivered_bytes - 0.25) < 0.15
    flipped = place_checkpoint(tied, rooms[::-1])
    assert flipped.devices[0].total_bytes > flipped.devices[1].total_bytes


async def test_each_file_read_once(tied: Path, pairs: Pairs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes read from the files, counted where they are read (headers, each backend's file
    copies, the shared reads into host memory): every byte of the checkpoint exactly once."""
    reads: list[tuple[str, int, int]] = []  # file, offset, size
    real_pread = header_format._pread_exact

    def counted_pread(fd: int, size: int, offset: int, path: str, what: str) -> bytes:
        reads.append((path, offset, size))
        return real_pread(fd, size, offset, path, what)

    monkeypatch.setattr(header_format, "_pread_exact", counted_pread)
    real_read = spread.read_exact

    def counted_read(fd: int, view: memoryview, position: int) -> None:
        reads.append((os.readlink(f"/proc/self/fd/{fd}"), position, view.nbytes))
        real_read(fd, view, position)

    monkeypatch.setattr(spread, "read_exact", counted_read)
    for backend, _ in pairs:
        real_copy = backend.copy_file_to_device

        def counting(real: Any) -> Any:
            async def copy(source: Any, handle: Any, offset: int = 0, **kwargs: Any) -> int:
                reads.append((source.name, kwargs["file_offset"], kwargs["size_bytes"]))
                return int(await real(source, handle, offset, **kwargs))

            return copy

        monkeypatch.setattr(backend, "copy_file_to_device", counting(real_copy))
    before = _rchar()
    placed = await load_across(pairs, tied)
    read_by_kernel = _rchar() - before
    files = sorted(str(p) for p in tied.parent.glob("*.safetensors"))
    assert len(files) == 3 and sorted(placed.files) == files
    size = sum(os.path.getsize(f) for f in files)
    assert sum(n for _, _, n in reads) == size
    for file in files:  # the ranges read of each file tile it: no byte twice, none left out
        ranges = sorted((offset, offset + n) for path, offset, n in reads if path == file)
        position = 0
        for begin, end in ranges:
            assert begin == position, (file, ranges)
            position = end
        assert position == os.path.getsize(file)
    # The kernel's own count agrees (the index JSON and /proc reads add a few KiB at most).
    assert size <= read_by_kernel < size + (256 << 10)
    assert placed.read_bytes == size - sum(_header_bytes(Path(f)) for f in files)
    assert placed.delivered_bytes > placed.read_bytes  # the embedding, delivered twice
    await check_exact(pairs, placed)
    await placed.deallocate(pairs)


def _rchar() -> int:
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))


def _header_bytes(path: Path) -> int:
    with path.open("rb") as file:
        return 8 + int.from_bytes(file.read(8), "little")


async def test_explicit_ranges_and_exo_shards(tied: Path, pairs: Pairs) -> None:
    class Shard:  # exo's PipelineShardMetadata, as far as placement reads it
        def __init__(self, start: int, end: int) -> None:
            self.start_layer, self.end_layer, self.n_layers = start, end, 6

    placed = await load_across(pairs, tied, split=[Shard(0, 4), LayerRange(4, 6)])
    assert placed.split == "explicit"
    assert placed.weights["vulkan:0"].layers == LayerRange(0, 4, 6)
    assert placed.weights["host:0"].layers == LayerRange(4, 6, 6)
    assert "model.layers.3.mlp.up_proj.weight" in placed.weights["vulkan:0"].tensors
    assert "model.layers.4.mlp.up_proj.weight" in placed.weights["host:0"].tensors
    await check_exact(pairs, placed)
    await placed.deallocate(pairs)
    with pytest.raises(ValueError, match="1 layer range"):
        place_checkpoint(
            tied, [DeviceRoom("a:0", 1 << 30), DeviceRoom("b:0", 1 << 30)], split=[LayerRange(0, 6)]
        )


async def test_callable_rule_and_a_node_range(tied: Path, pairs: Pairs) -> None:
    """A rule sees the node's range (exo gave this node layers 2:6) and the devices' room."""
    seen: list[SplitRequest] = []

    def last_layer_on_host(request: SplitRequest) -> list[LayerRange]:
        seen.append(request)
        return [LayerRange(request.start, request.end - 1), LayerRange(request.end - 1, request.end)]

    placed = await load_across(pairs, tied, layers=LayerRange(2, 6), split=last_layer_on_host)
    (request,) = seen
    assert (request.start, request.end, request.count, len(request.layer_bytes)) == (2, 6, 6, 4)
    assert request.first_bytes == 0 and request.last_bytes > 0  # norm + the tied embedding
    assert [room.device_id for room in request.devices] == ["vulkan:0", "host:0"]
    assert placed.split == "callable"
    assert placed.weights["host:0"].layers == LayerRange(5, 6, 6)
    # Layers 2:6 do not start at 0: only the last range (host) holds the tied embedding.
    assert "model.embed_tokens.weight" not in placed.weights["vulkan:0"].tensors
    assert "model.embed_tokens.weight" in placed.weights["host:0"].tensors
    await check_exact(pairs, placed)
    await placed.deallocate(pairs)


async def test_refused_before_allocating(tied: Path, pairs: Pairs) -> None:
    rooms = await spread.device_rooms(pairs)
    rooms[1] = DeviceRoom("host:0", 1000, None)
    plan = place_checkpoint(tied, rooms, split=[LayerRange(0, 3), LayerRange(3, 6)])
    assert not plan.fits and plan.devices[0].fits
    assert plan.devices[1].shortfall_bytes == plan.devices[1].need_bytes - 1000
    allocated: list[str] = []
    for backend, _ in pairs:
        real = backend.allocate

        def spy(real: Any = real) -> Any:
            async def allocate(*args: Any, **kwargs: Any) -> Any:
                allocated.append(args[0])
                return await real(*args, **kwargs)

            return allocate

        backend.allocate = spy()  # type: ignore[method-assign]
    fds = open_fds()
    with pytest.raises(OutOfMemoryError, match=r"host:0 needs .* but has .* available \(.* short\)"):
        await load_placement(pairs, plan)
    assert allocated == [] and live(pairs) == [] and open_fds() == fds


async def test_tied_embedding_is_read_once_for_both(tied: Path, pairs: Pairs) -> None:
    plan = await plan_across(pairs, tied, split=[LayerRange(0, 3), LayerRange(3, 6)])
    (read,) = plan.shared_reads
    embedding = TIED.vocab * TIED.hidden * 2
    assert read.size == embedding
    assert sorted(t.device for t in read.targets) == [0, 1]
    assert [t.name for d in plan.devices for t in d.shared.tensors] == ["model.embed_tokens.weight"] * 2
    assert plan.delivered_bytes == plan.read_bytes + embedding


async def test_progress_whole_and_per_device(tied: Path, pairs: Pairs) -> None:
    updates: list[PlacementProgress] = []
    placed = await load_across(pairs, tied, progress=updates.append)
    assert updates[-1].bytes_done == updates[-1].bytes_total == placed.delivered_bytes
    for _, device in pairs:
        mine = [u.device for u in updates if u.device_id == device]
        assert mine[-1].bytes_done == mine[-1].bytes_total == placed.weights[device].total_bytes
        assert mine[-1].tensors_done == mine[-1].tensors_total == len(placed.weights[device].tensors)
        assert [u.bytes_done for u in mine] == sorted(u.bytes_done for u in mine)
    await placed.deallocate(pairs)


# ------------------------------------------------------------------------------------------------
# Cancellation and errors: nothing left on either device, no descriptor left open

POINTS = ["vulkan-allocate", "host-allocate", "vulkan-file-copy", "host-file-copy", "shared-copy"]


@pytest.mark.parametrize("point", POINTS)
async def test_cancel_frees_everything(point: str, tied: Path, pairs: Pairs) -> None:
    """Cancelled while one device's allocation, file copy or shared copy is held up: the held
    operation is allowed to finish (it may be writing into the memory), then both devices are
    empty and every file is closed."""
    where, _, what = point.partition("-")
    backends = {device.partition(":")[0]: backend for backend, device in pairs}
    backend = backends.get(where, backends["host"])
    method = {"allocate": "allocate", "file-copy": "copy_file_to_device", "copy": "copy_to_device"}[what]
    real = getattr(backend, method)
    held = asyncio.Event()
    release = asyncio.Event()
    finished: list[str] = []

    async def slow(*args: Any, **kwargs: Any) -> Any:
        held.set()
        await release.wait()
        result = await real(*args, **kwargs)
        finished.append(method)
        return result

    setattr(backend, method, slow)
    fds = open_fds()

    task = asyncio.ensure_future(load_across(pairs, tied, split=[LayerRange(0, 3), LayerRange(3, 6)]))
    await held.wait()
    await asyncio.sleep(0.02)
    task.cancel()
    await asyncio.sleep(0.02)
    assert not task.done()  # waiting for the held operation
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished  # the held operation ran to its end before anything was freed
    assert live(pairs) == []
    assert open_fds() == fds


@pytest.mark.parametrize("after", [1, 3, 6])
async def test_cancel_from_progress(after: int, tied: Path, pairs: Pairs) -> None:
    fds = open_fds()

    seen = 0
    task: asyncio.Future[PlacedWeights] | None = None

    def progress(update: PlacementProgress) -> None:
        nonlocal seen
        seen += 1
        if seen == after and task is not None:
            task.cancel()

    task = asyncio.ensure_future(load_across(pairs, tied, pack="tensor", progress=progress))
    with pytest.raises(asyncio.CancelledError):
        await task
    assert live(pairs) == [] and open_fds() == fds


async def test_an_error_on_one_device_frees_the_other(tied: Path, pairs: Pairs) -> None:
    """host:0 fails its second allocation; vulkan:0's finished or running part is freed too, and
    the error names the device."""
    host = pairs[1][0]
    real = host.allocate
    calls = 0

    async def failing(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OutOfMemoryError("no room left")
        return await real(*args, **kwargs)

    host.allocate = failing  # type: ignore[method-assign]
    fds = open_fds()
    with pytest.raises(
        OutOfMemoryError, match=r"^host:0: \S+\.safetensors: allocation \d+ of \d+ .*: no room left$"
    ):
        await load_across(pairs, tied, split=[LayerRange(0, 3), LayerRange(3, 6)])
    assert live(pairs) == [] and open_fds() == fds


# ------------------------------------------------------------------------------------------------
# The CLI


def cli(*argv: str) -> tuple[int, str, str]:
    import io

    from exo_gpu_plugins.cli import main

    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), out=out, err=err), out.getvalue(), err.getvalue()


def test_cli_load_over_two_devices(tied: Path, pairs: Pairs) -> None:
    import json

    status, out, err = cli(
        "load", str(tied), "--devices", "vulkan:0,host:0", "--split", "0:3", "3:6", "--verify", "--json"
    )
    assert (status, err) == (0, "")
    summary = json.loads(out)
    assert summary["verified"] is True and summary["split"] == "explicit"
    assert [(d["device_id"], d["layers"]) for d in summary["devices"]] == [
        ("vulkan:0", "0:3"),
        ("host:0", "3:6"),
    ]
    assert [d["shared_tensors"] for d in summary["devices"]] == [["model.embed_tokens.weight"]] * 2
    status, out, err = cli("load", str(tied), "--devices", "vulkan:0,host:0", "--verify")
    assert status == 0 and "vulkan:0" in out and "identical" in out and "each tensor byte once" in out
    status, out, err = cli("load", str(tied), "--devices", "vulkan:0,host:0", "--split", "0:3")
    assert status == 2 and err.count("\n") == 1 and "1 layer range(s) for 2 device(s)" in err
