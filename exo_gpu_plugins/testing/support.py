"""What the kit's clauses and its state machine share: test data, event loops, memory figures and
the check of a backend's reads on their own.

It imports neither pytest nor Hypothesis, so that every clause module can use it and only the
property-based clause ("state machine") pulls Hypothesis in, when it runs.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.models import Capabilities, MemoryReport

__all__ = [
    "WRONG_READ",
    "available_follows_allocations",
    "check_figures",
    "check_reads",
    "check_report",
    "close_loop",
    "pattern",
    "plain_int",
]

_NO_ZERO = bytes([1, *range(1, 256)])

#: How `check_reads` begins the message of a read that disagrees with a whole read.
WRONG_READ = "wrong read: "


def pattern(seed: int, size: int) -> bytes:
    """`size` pseudo-random bytes, none of them zero (so a missing write never reads as 'right')."""
    data = random.Random(seed).randbytes(size)
    return data.translate(_NO_ZERO)


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close a kit-owned event loop after its async generators and executor threads finished."""
    try:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


def plain_int(value: object) -> bool:
    """An int that is not a bool (True is an int to Python, never a byte count to the contract)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_figures(what: str, total: object, used: object, available: object, reserved: object) -> None:
    """Plain non-negative ints that add up: used + available + reserved == total."""
    figures = {"total": total, "used": used, "available": available, "reserved": reserved}
    for name, value in figures.items():
        assert plain_int(value), f"{what}: {name}_bytes is {value!r}, not an int"
        assert value >= 0, f"{what}: {name}_bytes is negative ({value})"  # type: ignore[operator]
    t, u, a, r = (int(v) for v in figures.values())  # type: ignore[call-overload]
    assert u <= t, f"{what}: used_bytes {u} > total_bytes {t}"
    assert a <= t, f"{what}: available_bytes {a} > total_bytes {t}"
    assert u + a + r == t, (
        f"{what} does not add up: used + available + reserved = {u + a + r} != total = {t} "
        f"(used {u}, available {a}, reserved {r})"
    )


def check_report(report: MemoryReport, what: str) -> None:
    """`check_figures` of a report and of each of its heaps (a backend can bypass the model's
    validators with `model_construct`)."""
    check_figures(
        what, report.total_bytes, report.used_bytes, report.available_bytes, report.reserved_bytes
    )
    for heap in report.heaps:
        check_figures(
            f"heap {heap.index} of {what}",
            heap.total_bytes,
            heap.used_bytes,
            heap.available_bytes,
            heap.reserved_bytes,
        )


def available_follows_allocations(caps: Capabilities) -> bool:
    """Whether the kit holds available_bytes to falling with this process's allocations.

    Yes with `memory_budget` (live driver figures) or `available_tracks_allocations`, and also when
    the backend left `available_tracks_allocations` out: falling is the contract's default, so a
    backend that says nothing is checked. Only an explicit `available_tracks_allocations=False`
    (without `memory_budget`) opts out, for a figure taken from outside the process, such as the
    OS's estimate of free RAM, which on virtual machines lags allocations by seconds.
    """
    if caps.memory_budget or caps.available_tracks_allocations:
        return True
    return "available_tracks_allocations" not in caps.model_fields_set


# (offset, size) reads of `_READ_PROBE_BYTES` checked against one read of the whole allocation:
# small and large, at offset 0 and away from it, ending at the end.
_READ_PROBE_BYTES = 4096 + 13
_READ_PROBES = (
    (1, 1),
    (7, 3),
    (100, 16),
    (1000, 64),
    (5, 200),
    (33, 1000),
    (0, 64),
    (4000, _READ_PROBE_BYTES - 4000),
    (1, _READ_PROBE_BYTES - 1),
)


async def check_reads(backend: GPUBackend[Any], device: str) -> None:
    """Check the backend's reads on their own, before they are trusted to check anything else.

    One allocation is written whole, once, and read whole; then reads of ranges (small and large,
    with and without an offset), through `copy_from_device` and `copy_from_device_into`, must equal
    the same bytes of that whole read. A read that disagrees is reported as a wrong read, naming
    where its bytes came from when they are the allocation's bytes at another offset; a write and
    a whole read that disagree are reported as such, since one of the two is wrong.
    """
    data = pattern(0x5EAD, _READ_PROBE_BYTES)
    handle = await backend.allocate(device, len(data))
    try:
        await backend.copy_to_device(data, handle, 0)
        whole = await backend.copy_from_device(handle, 0, len(data))
        if whole != data:
            first = next(i for i, (a, b) in enumerate(zip(whole, data, strict=False)) if a != b)
            raise AssertionError(
                f"a {len(data)}-byte allocation written whole with copy_to_device reads back "
                f"different with copy_from_device of the whole allocation (byte {first}): either "
                "the write or the read is wrong; the 'copy to device' and 'copy from device' "
                "clauses check them with ranges"
            )
        for offset, size in _READ_PROBES:
            want = whole[offset : offset + size]
            got = await backend.copy_from_device(handle, offset, size)
            _same_read(got, want, whole, f"copy_from_device(offset={offset}, size={size})", offset)
            out = bytearray(size)
            await backend.copy_from_device_into(handle, offset, out)
            _same_read(
                bytes(out), want, whole, f"copy_from_device_into(offset={offset}, {size} bytes)", offset
            )
    finally:
        await backend.deallocate(handle)


def _same_read(got: bytes, want: bytes, whole: bytes, call: str, offset: int) -> None:
    if got == want:
        return
    if len(got) != len(want):
        raise AssertionError(f"{WRONG_READ}{call} returned {len(got)} bytes")
    first = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
    found = whole.find(got)
    source = (
        f"; they are the allocation's bytes at offset {found}, not {offset}: the read ignores or "
        "misplaces its offset"
        if found >= 0 and found != offset
        else ""
    )
    raise AssertionError(
        f"{WRONG_READ}{call} disagrees with a read of the whole allocation, which matches what was "
        f"written: byte {offset + first} reads {got[first]:#04x}, not {want[first]:#04x}{source} "
        "(the kit checks reads on their own first, so that a wrong read is not blamed on what it "
        "was reading)"
    )
