"""One checkpoint over several devices of a node: which layers, and which tensors, go where.

`place_checkpoint(paths, rooms, split=...)` reads every header once and splits a layer range
(default: the whole model; for exo, the node's `PipelineShardMetadata`) over the devices, in the
order given, by a rule the caller chooses:
- `"memory"` (the default): contiguous ranges sized in proportion to each device's available
  memory (`DeviceRoom.available_bytes`), every device getting at least one layer;
- a sequence of `LayerRange` (or exo shards: anything with `start_layer`, `end_layer`,
  `n_layers`), one per device, as exo placed them;
- a callable taking a `SplitRequest` (the layer count, every layer's bytes, what the first and
  last ranges add, the devices' room) and returning such a sequence.

Each device's tensors are chosen by the same rule as a one-device load (`selection.py`: its range,
plus the embedding on the first range, the norm and head on the last, the tied embedding on the
last too). A tensor chosen for two or more devices (the tied embedding; a layer of two ranges
that overlap) is *shared*: it is read from its file once, into host memory, and copied from there
to every device that holds it (`SharedRead`); every other tensor is read from its file straight
to its one device. So each byte of the checkpoint is read from the files once.

The result says, before anything is allocated, each device's plan (`DevicePlacement.own`: filled
from the files; `.shared`: filled from host memory), what it needs and whether it has room;
`PlacementPlan.check_fits()` raises `OutOfMemoryError` naming each device that is short, and by
how much.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from exo_gpu_plugins.errors import CheckpointError, OutOfMemoryError
from exo_gpu_plugins.sizes import format_bytes
from exo_gpu_plugins.weights.checkpoint import Checkpoint, PathsArg, open_checkpoint
from exo_gpu_plugins.weights.plan import (
    CheckpointPlan,
    Pack,
    PlannedTensor,
    check_options,
    describe_paths,
    plan_selection,
)
from exo_gpu_plugins.weights.selection import LayerRange, Selection, layer_index, make_selection

__all__ = [
    "SHARED_PIECE_BYTES",
    "DevicePlacement",
    "DeviceRoom",
    "PlacementPlan",
    "SharedRead",
    "SharedTarget",
    "Split",
    "SplitRequest",
    "SplitRule",
    "place_checkpoint",
]

# A shared range is read into host memory in pieces of at most this size, each copied to every
# device that holds it before the next is read: host memory stays bounded.
SHARED_PIECE_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class DeviceRoom:
    """A device as placement sees it: its id, the bytes it can still allocate, and its cap on
    one allocation (None: no cap)."""

    device_id: str
    available_bytes: int
    max_allocation_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class SplitRequest:
    """What a split rule decides from. `layer_bytes[i]` is the size of layer `start + i`;
    `first_bytes` is what the range starting at layer 0 adds (embedding, anything outside the
    stack), `last_bytes` what the range ending at the last layer adds (final norm, head, and the
    embedding again when it is tied); both are 0 when `start`/`end` do not touch those ends."""

    start: int
    end: int
    count: int
    layer_bytes: tuple[int, ...]
    first_bytes: int
    last_bytes: int
    devices: tuple[DeviceRoom, ...]


SplitRule = Callable[[SplitRequest], Sequence[object]]
Split = Literal["memory"] | Sequence[object] | SplitRule


@dataclass(frozen=True, slots=True)
class DevicePlacement:
    """One device's part. `own` is filled from the files; `shared` (tensors other devices hold
    too) from host memory, its allocations following `own`'s in the loaded result."""

    device_id: str
    layers: LayerRange
    own: CheckpointPlan
    shared: CheckpointPlan
    available_bytes: int

    @property
    def need_bytes(self) -> int:
        """Device memory the load allocates here (padding included)."""
        return self.own.allocated_bytes + self.shared.allocated_bytes

    @property
    def total_bytes(self) -> int:
        """Tensor bytes that land on this device."""
        return self.own.total_bytes + self.shared.total_bytes

    @property
    def shortfall_bytes(self) -> int:
        """How much more memory the device would need (0 when it has room)."""
        return max(0, self.need_bytes - self.available_bytes)

    @property
    def fits(self) -> bool:
        return self.shortfall_bytes == 0

    def combined(self) -> CheckpointPlan:
        """`own` then `shared` as one plan (the shared tensors' allocations numbered after own's):
        what the device's `LoadedWeights` describes."""
        shift = len(self.own.allocations)
        moved = tuple(
            tensor
            if tensor.allocation is None
            else tensor._replace(allocation=tensor.allocation + shift)
            for tensor in self.shared.tensors
        )
        return CheckpointPlan(
            tensors=self.own.tensors + moved,
            allocations=self.own.allocations + self.shared.allocations,
            files=self.own.files,
            total_bytes=self.total_bytes,
            allocated_bytes=self.need_bytes,
            pack=self.own.pack,
            layers=self.layers,
        )


@dataclass(frozen=True, slots=True)
class SharedTarget:
    """Where part of a shared piece lands: `size` bytes from `piece_offset` of the piece, to
    `offset` of allocation `allocation` of device number `device` (in `shared`'s numbering)."""

    device: int
    allocation: int
    offset: int
    piece_offset: int
    size: int


@dataclass(frozen=True, slots=True)
class SharedRead:
    """One read into host memory (`size` bytes at `file_offset`), copied to every target.
    `completes[d]` counts device d's shared tensors complete once this piece is delivered."""

    file: str
    identity: tuple[int, int, int, int]
    file_offset: int
    size: int
    targets: tuple[SharedTarget, ...]
    completes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PlacementPlan:
    """The whole load: each device's part, the shared reads, and what is read and delivered.
    `read_bytes` is what the load reads from the files (each tensor byte once);
    `delivered_bytes` what lands on the devices (a shared tensor once per device)."""

    devices: tuple[DevicePlacement, ...]
    shared_reads: tuple[SharedRead, ...]
    files: tuple[str, ...]
    read_bytes: int
    delivered_bytes: int
    split: str

    @property
    def fits(self) -> bool:
        return all(device.fits for device in self.devices)

    def check_fits(self) -> None:
        """Raise `OutOfMemoryError` naming every device short of memory, and by how much."""
        short = [device for device in self.devices if not device.fits]
        if short:
            raise OutOfMemoryError(
                "the placement does not fit: "
                + "; ".join(
                    f"{d.device_id} needs {format_bytes(d.need_bytes)} for layers {d.layers} but "
                    f"has {format_bytes(d.available_bytes)} available "
                    f"({format_bytes(d.shortfall_bytes)} short)"
                    for d in short
                )
            )


def place_checkpoint(
    paths: PathsArg,
    rooms: Sequence[DeviceRoom],
    *,
    split: Split = "memory",
    layers: LayerRange | None = None,
    select: Callable[[str], bool] | None = None,
    pack: Pack = "file",
) -> PlacementPlan:
    """Plan the load of the checkpoint at `paths` over the devices of `rooms` (in pipeline
    order): `layers` (default: all) split by `split`, `select` applied on top as in
    `plan_checkpoint`. Every header is read once; nothing is allocated; a malformed checkpoint or
    split is a `CheckpointError`/`ValueError`. Whether it fits is in the result (`check_fits`)."""
    if not rooms:
        raise ValueError("place_checkpoint needs at least one device")
    ids = [room.device_id for room in rooms]
    if len(set(ids)) != len(ids):
        raise ValueError(f"a device is named twice: {', '.join(ids)}")
    check_options(pack, layers, select)
    checkpoint = open_checkpoint(paths)
    where = describe_paths(paths)
    names = list(checkpoint.tensor_names())

    def choose(chosen: LayerRange) -> Selection:
        return make_selection(names, chosen, select, where, locate=checkpoint.locate)

    whole = choose(layers if layers is not None else LayerRange())
    assert whole.start is not None and whole.end is not None and whole.count is not None
    ranges, rule = _split(split, checkpoint, whole, choose, tuple(rooms))
    selections = [choose(chosen) for chosen in ranges]
    holders = collections.Counter(name for chosen in selections for name in names if chosen(name))
    shared = frozenset(name for name, count in holders.items() if count > 1)
    devices = []
    for room, chosen in zip(rooms, selections, strict=True):
        own = _restricted(chosen, lambda name: name not in shared)
        mine = _restricted(chosen, lambda name: name in shared)
        limit = room.max_allocation_bytes
        devices.append(
            DevicePlacement(
                device_id=room.device_id,
                layers=LayerRange(chosen.start or 0, chosen.end, chosen.count),
                own=plan_selection(checkpoint, own, pack=pack, max_allocation_bytes=limit),
                shared=plan_selection(checkpoint, mine, pack=pack, max_allocation_bytes=limit),
                available_bytes=room.available_bytes,
            )
        )
    if not any(device.own.tensors or device.shared.tensors for device in devices):
        raise CheckpointError(f"{where}: the selection chooses no tensor")
    reads = _shared_reads(checkpoint, shared, devices)
    read = sum(d.own.total_bytes for d in devices) + sum(r.size for r in reads)
    return PlacementPlan(
        devices=tuple(devices),
        shared_reads=reads,
        files=tuple(file.path for file in checkpoint.files),
        read_bytes=read,
        delivered_bytes=sum(device.total_bytes for device in devices),
        split=rule,
    )


def _restricted(selection: Selection, keep: Callable[[str], bool]) -> Selection:
    def predicate(name: str) -> bool:
        return selection(name) and keep(name)

    return Selection(selection.start, selection.end, selection.count, predicate)


# ------------------------------------------------------------------------------------------------
# Splitting the range


def _split(
    split: Split,
    checkpoint: Checkpoint,
    whole: Selection,
    choose: Callable[[LayerRange], Selection],
    rooms: tuple[DeviceRoom, ...],
) -> tuple[list[LayerRange], str]:
    if isinstance(split, str):
        if split != "memory":
            raise ValueError(
                f"split must be 'memory', a list of layer ranges or a callable, not {split!r}"
            )
        request = _request(checkpoint, whole, choose, rooms)
        return _check_ranges(proportional(request), whole, rooms, "split 'memory'"), "memory"
    if callable(split):
        request = _request(checkpoint, whole, choose, rooms)
        name = getattr(split, "__name__", type(split).__name__)
        return _check_ranges(split(request), whole, rooms, f"split rule {name}"), "callable"
    return _check_ranges(split, whole, rooms, "split"), "explicit"


def _request(
    checkpoint: Checkpoint,
    whole: Selection,
    choose: Callable[[LayerRange], Selection],
    rooms: tuple[DeviceRoom, ...],
) -> SplitRequest:
    """Layer sizes, and the ends' extras measured with the selection rule itself (a one-layer
    range at each end, less its layer), so that the rule is written once, in selection.py."""
    start, end, count = whole.start or 0, whole.end or 0, whole.count or 0
    sizes = [0] * (end - start)
    by_name: dict[str, int] = {}
    for file in checkpoint.files:
        for tensor in file.tensors:
            by_name[tensor.name] = tensor.nbytes
            index = layer_index(tensor.name)
            if index is not None and start <= index < end and whole(tensor.name):
                sizes[index - start] += tensor.nbytes

    def extra(at: int) -> int:
        chosen = choose(LayerRange(at, at + 1, count))
        return sum(size for name, size in by_name.items() if chosen(name)) - sizes[at - start]

    first = extra(0) if start == 0 and count > 1 else 0
    last = extra(count - 1) if end == count and count > 1 else 0
    return SplitRequest(start, end, count, tuple(sizes), first, last, rooms)


def proportional(request: SplitRequest) -> list[LayerRange]:
    """The `"memory"` rule: contiguous ranges whose bytes (the ends' extras included) are as near
    as layers allow to each device's share of the total available memory; at least one layer each."""
    devices = len(request.devices)
    layers = request.end - request.start
    if layers < devices:
        raise ValueError(
            f"{layers} layer(s) cannot be split over {devices} devices (one layer each at least)"
        )
    rooms = [max(0, room.available_bytes) for room in request.devices]
    weights = [r / sum(rooms) for r in rooms] if sum(rooms) else [1 / devices] * devices
    cumulative = [request.first_bytes]
    for size in request.layer_bytes:
        cumulative.append(cumulative[-1] + size)
    total = cumulative[-1] + request.last_bytes
    ranges = []
    begin = 0  # layers are counted from request.start here
    share = 0.0
    for number in range(devices - 1):
        share += weights[number]
        target = total * share
        latest = layers - (devices - 1 - number)
        end = min(range(begin + 1, latest + 1), key=lambda k: abs(cumulative[k] - target))
        ranges.append(LayerRange(request.start + begin, request.start + end, request.count))
        begin = end
    ranges.append(LayerRange(request.start + begin, request.end, request.count))
    return ranges


def _check_ranges(
    given: Sequence[object], whole: Selection, rooms: tuple[DeviceRoom, ...], what: str
) -> list[LayerRange]:
    if isinstance(given, (str, bytes)) or not isinstance(given, Sequence):
        raise TypeError(f"{what}: expected a sequence of layer ranges, got {type(given).__name__}")
    if len(given) != len(rooms):
        raise ValueError(f"{what}: {len(given)} layer range(s) for {len(rooms)} device(s)")
    ranges = []
    for room, item in zip(rooms, given, strict=True):
        chosen = item if isinstance(item, LayerRange) else LayerRange.from_shard(item)
        count = chosen.count if chosen.count is not None else whole.count
        if count != whole.count:
            raise ValueError(
                f"{what}: {room.device_id}'s range {chosen} is of {count} layers; "
                f"the model has {whole.count}"
            )
        ranges.append(LayerRange(chosen.start, chosen.end, count))
    return ranges


# ------------------------------------------------------------------------------------------------
# Shared tensors: read once, delivered to each holder


def _shared_reads(
    checkpoint: Checkpoint, shared: frozenset[str], devices: list[DevicePlacement]
) -> tuple[SharedRead, ...]:
    where = [{t.name: t for t in device.shared.tensors} for device in devices]
    reads: list[SharedRead] = []
    for file in checkpoint.files:
        runs: list[list[tuple[int, int, str]]] = []
        for tensor in file.tensors:
            if tensor.name not in shared or not tensor.nbytes:
                continue
            if runs and runs[-1][-1][1] == tensor.begin:
                runs[-1].append((tensor.begin, tensor.end, tensor.name))
            else:
                runs.append([(tensor.begin, tensor.end, tensor.name)])
        for run in runs:
            position, stop = run[0][0], run[-1][1]
            while position < stop:
                size = min(SHARED_PIECE_BYTES, stop - position)
                targets, completes = _targets(run, position, size, where)
                reads.append(SharedRead(file.path, file.identity, position, size, targets, completes))
                position += size
    return tuple(reads)


def _targets(
    run: list[tuple[int, int, str]],
    position: int,
    size: int,
    where: list[dict[str, PlannedTensor]],
) -> tuple[tuple[SharedTarget, ...], tuple[int, ...]]:
    targets: list[SharedTarget] = []
    completes = [0] * len(where)
    for begin, end, name in run:
        low, high = max(begin, position), min(end, position + size)
        if low >= high:
            continue
        for number, tensors in enumerate(where):
            planned = tensors.get(name)
            if planned is None or planned.allocation is None:
                continue
            offset = planned.offset + low - begin
            targets.append(SharedTarget(number, planned.allocation, offset, low - position, high - low))
            if end == high:
                completes[number] += 1
    return tuple(targets), tuple(completes)
