"""The load plan: which byte ranges of which files go to which allocation at which offset.

Everything is decided here, from checked headers, before the loader allocates a byte, so a bad
checkpoint or a bad selection fails with nothing to clean up.

Packing. With `pack="file"` (the default) each file's selected tensors fill allocations of about
`ALLOCATION_PIECE_BYTES` each, in file order, a new one starting at the tensor that would take the
current one past that size (a larger tensor gets one of its own); the plan's first allocation
holds at most `FIRST_ALLOCATION_BYTES` (unless its first tensor alone is larger). Large
allocations take the driver milliseconds (an exportable 1 GiB one 2-4 ms, 8 GiB 13 ms on an
H100), and the loader makes the next allocation while the one before fills: so the first copy
starts after a small allocation and the others cost almost no time. Selected tensors that are
adjacent in the file form one *run*: one file range that lands on one range of an allocation,
copied by one call. Between runs the unselected bytes are left out; each run starts at the next
allocation offset that is congruent to its offset in the file's data section modulo `ALIGNMENT`,
so every tensor keeps (up to 64 bytes) the alignment it has in the file, at a cost of under 64
bytes per run. Where the device caps one allocation
below that (`Capabilities.max_allocation_bytes`) the cap is the size; a tensor larger than the cap
is refused with `OutOfMemoryError` at planning. With `pack="tensor"` each tensor has its own
allocation, at offset 0. Zero-byte tensors take no memory and no allocation.

A run longer than `MAX_COPY_BYTES` is copied in pieces of that size, so that progress is reported
and a cancellation is honoured at least once per piece (a piece is 1 GiB: at link rates that is a
few tens of milliseconds, long enough that the per-call cost is negligible).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

from exo_gpu_plugins.errors import CheckpointError, OutOfMemoryError
from exo_gpu_plugins.weights.checkpoint import Checkpoint, PathsArg, open_checkpoint
from exo_gpu_plugins.weights.format import SafetensorsFile, TensorEntry
from exo_gpu_plugins.weights.selection import LayerRange, Selection, make_selection

__all__ = [
    "ALIGNMENT",
    "ALLOCATION_PIECE_BYTES",
    "FIRST_ALLOCATION_BYTES",
    "MAX_COPY_BYTES",
    "AllocationPlan",
    "CheckpointPlan",
    "CopyStep",
    "Pack",
    "PlannedTensor",
    "check_options",
    "describe_paths",
    "plan_checkpoint",
    "plan_selection",
]

Pack = Literal["file", "tensor"]

ALIGNMENT = 64
ALLOCATION_PIECE_BYTES = 1 << 30
FIRST_ALLOCATION_BYTES = 128 << 20  # copied in ~3 ms at link rates, while the next is made
MAX_COPY_BYTES = 1 << 30


class PlannedTensor(NamedTuple):
    """Where one tensor will live: `offset` in its allocation (`allocation` is None when empty).
    (A named tuple, like `TensorEntry`: one is built per tensor of the checkpoint.)"""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    file_offset: int
    size_bytes: int
    allocation: int | None
    offset: int


@dataclass(frozen=True, slots=True)
class CopyStep:
    """One `copy_file_to_device` call: `size` bytes from `file_offset` to `offset`. `tensors_done`
    counts the tensors of the allocation that are complete once this step has run."""

    file_offset: int
    size: int
    offset: int
    tensors_done: int


@dataclass(frozen=True, slots=True)
class AllocationPlan:
    """One allocation: its size, the file it is filled from and the copies that fill it."""

    file: str
    identity: tuple[int, int, int, int]
    size_bytes: int
    steps: tuple[CopyStep, ...]
    tensor_count: int

    @property
    def fills_whole(self) -> bool:
        """Whether the copies write every byte of the allocation (no alignment padding between
        runs), so the memory need not be zeroed first."""
        end = 0
        for step in sorted(self.steps, key=lambda step: step.offset):
            if step.offset != end:
                return False
            end += step.size
        return end == self.size_bytes


@dataclass(frozen=True, slots=True)
class CheckpointPlan:
    """What `load_weights` will do. `total_bytes` counts tensor bytes (what is copied);
    `allocated_bytes` adds the alignment padding between runs."""

    tensors: tuple[PlannedTensor, ...]
    allocations: tuple[AllocationPlan, ...]
    files: tuple[str, ...]
    total_bytes: int
    allocated_bytes: int
    pack: Pack
    layers: LayerRange | None


def plan_checkpoint(
    paths: PathsArg,
    layers: LayerRange | None = None,
    select: Callable[[str], bool] | None = None,
    *,
    pack: Pack = "file",
    max_allocation_bytes: int | None = None,
) -> CheckpointPlan:
    """Check every header of the checkpoint at `paths` and plan the load of the chosen tensors,
    with no allocation larger than `max_allocation_bytes` (the device's cap, when it has one)."""
    check_options(pack, layers, select)
    checkpoint = open_checkpoint(paths)
    where = describe_paths(paths)
    selection = make_selection(
        checkpoint.tensor_names(), layers, select, where, locate=checkpoint.locate
    )
    plan = plan_selection(checkpoint, selection, pack=pack, max_allocation_bytes=max_allocation_bytes)
    if not plan.tensors:
        raise CheckpointError(f"{where}: the selection chooses no tensor")
    return plan


def check_options(pack: object, layers: object, select: object) -> None:
    """The load options every planner takes, each refused naming what it should be."""
    if pack not in ("file", "tensor"):
        raise ValueError(f"pack must be 'file' or 'tensor', not {pack!r}")
    if layers is not None and not isinstance(layers, LayerRange):
        raise TypeError(f"layers must be a LayerRange or None, not {type(layers).__name__}")
    if select is not None and not callable(select):
        raise TypeError(f"select must be a callable taking a tensor name, not {type(select).__name__}")


def plan_selection(
    checkpoint: Checkpoint,
    selection: Selection,
    *,
    pack: Pack = "file",
    max_allocation_bytes: int | None = None,
) -> CheckpointPlan:
    """The plan of the tensors `selection` chooses in an opened `checkpoint` (its headers read
    once, for as many plans as the caller makes from them); an empty choice is an empty plan."""
    _check_missing(checkpoint, selection)
    tensors: list[PlannedTensor] = []
    allocations: list[AllocationPlan] = []
    for file in checkpoint.files:
        chosen = [tensor for tensor in file.tensors if selection(tensor.name)]
        if pack == "file":
            _pack_file(file, chosen, tensors, allocations, max_allocation_bytes)
        else:
            _pack_tensors(file, chosen, tensors, allocations, max_allocation_bytes)
    resolved = (
        None if selection.start is None else LayerRange(selection.start, selection.end, selection.count)
    )
    return CheckpointPlan(
        tensors=tuple(tensors),
        allocations=tuple(allocations),
        files=tuple(file.path for file in checkpoint.files),
        total_bytes=sum(t.size_bytes for t in tensors),
        allocated_bytes=sum(a.size_bytes for a in allocations),
        pack=pack,
        layers=resolved,
    )


def describe_paths(paths: PathsArg) -> str:
    """The checkpoint as errors name it: its path, or the first of its paths and how many more."""
    if isinstance(paths, (str, os.PathLike)):
        return os.fspath(paths)
    names = [os.fspath(p) for p in paths]
    return names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1} more)"


def _check_missing(checkpoint: Checkpoint, selection: Selection) -> None:
    for shard in checkpoint.missing:
        for name in shard.tensor_names:
            if selection(name):
                raise CheckpointError(
                    f"{shard.path}: tensor {name!r}: this shard, named by the index {shard.index}, "
                    "does not exist"
                )


def _pack_file(
    file: SafetensorsFile,
    chosen: list[TensorEntry],
    tensors: list[PlannedTensor],
    allocations: list[AllocationPlan],
    limit: int | None,
) -> None:
    """The file's selected tensors into allocations of about ALLOCATION_PIECE_BYTES (of at most
    `limit`, the device's cap): a new one starts at the tensor that would not fit."""
    piece = ALLOCATION_PIECE_BYTES if limit is None else min(limit, ALLOCATION_PIECE_BYTES)
    # Nothing overlaps the making of a load's first allocation: it is kept small. (A plan that
    # follows another, as placement's shared tensors do, keeps it small too: harmless.)
    first = min(piece, FIRST_ALLOCATION_BYTES)
    placed: dict[str, tuple[int, int]] = {}
    group: list[TensorEntry] = []
    cursor = 0
    last_end = -1  # where the group's last tensor ends in the file
    for tensor in chosen:
        size = tensor.end - tensor.begin
        if not size:
            continue
        pad = 0 if tensor.begin == last_end else (tensor.begin - file.data_start - cursor) % ALIGNMENT
        if group and cursor + pad + size > (piece if allocations else first):
            _lay_out(file, group, allocations, placed)
            group, cursor = [], 0
            pad = (tensor.begin - file.data_start) % ALIGNMENT
        if limit is not None and pad + size > limit:
            raise OutOfMemoryError(
                f"{file.path}: tensor {tensor.name!r}: {size} bytes is more than the device "
                f"allows in one allocation ({limit} bytes)"
            )
        group.append(tensor)
        cursor += pad + size
        last_end = tensor.end
    if group:
        _lay_out(file, group, allocations, placed)
    for tensor in chosen:
        tensors.append(_planned(file, tensor, *placed.get(tensor.name, (None, 0))))


def _lay_out(
    file: SafetensorsFile,
    group: list[TensorEntry],
    allocations: list[AllocationPlan],
    placed: dict[str, tuple[int, int]],
) -> None:
    """Tensors (non-empty, in file order) into one allocation: adjacent ones form runs, each run
    starts at an offset congruent to its data-section offset modulo ALIGNMENT."""
    runs: list[list[TensorEntry]] = []
    for tensor in group:
        if runs and runs[-1][-1].end == tensor.begin:
            runs[-1].append(tensor)
        else:
            runs.append([tensor])
    number = len(allocations)
    steps: list[CopyStep] = []
    cursor = 0
    done = 0
    for run in runs:
        begin = run[0].begin
        cursor += (begin - file.data_start - cursor) % ALIGNMENT
        for tensor in run:
            placed[tensor.name] = (number, cursor + tensor.begin - begin)
        size = run[-1].end - begin
        done = _steps(steps, begin, size, cursor, run, done)
        cursor += size
    allocations.append(AllocationPlan(file.path, file.identity, cursor, tuple(steps), done))


def _pack_tensors(
    file: SafetensorsFile,
    chosen: list[TensorEntry],
    tensors: list[PlannedTensor],
    allocations: list[AllocationPlan],
    limit: int | None,
) -> None:
    for tensor in chosen:
        if limit is not None and tensor.nbytes > limit:
            raise OutOfMemoryError(
                f"{file.path}: tensor {tensor.name!r}: {tensor.nbytes} bytes is more than the device "
                f"allows in one allocation ({limit} bytes)"
            )
        if not tensor.nbytes:
            tensors.append(_planned(file, tensor, None, 0))
            continue
        steps: list[CopyStep] = []
        _steps(steps, tensor.begin, tensor.nbytes, 0, [tensor], 0)
        tensors.append(_planned(file, tensor, len(allocations), 0))
        allocations.append(AllocationPlan(file.path, file.identity, tensor.nbytes, tuple(steps), 1))


def _steps(
    steps: list[CopyStep], begin: int, size: int, offset: int, run: list[TensorEntry], done: int
) -> int:
    """Split one run into copies of at most MAX_COPY_BYTES; returns the tensors done after it."""
    position = 0
    pending = iter(run)
    upcoming = next(pending, None)
    while position < size:
        piece = min(MAX_COPY_BYTES, size - position)
        position += piece
        while upcoming is not None and upcoming.end <= begin + position:
            done += 1
            upcoming = next(pending, None)
        steps.append(CopyStep(begin + position - piece, piece, offset + position - piece, done))
    return done


def _planned(
    file: SafetensorsFile, tensor: TensorEntry, allocation: int | None, offset: int
) -> PlannedTensor:
    name, dtype, shape, begin, end = tensor
    return PlannedTensor(name, dtype, shape, file.path, begin, end - begin, allocation, offset)
