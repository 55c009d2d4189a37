"""Clauses "memory report" and "memory accounting"."""

from __future__ import annotations

import pytest

from exo_gpu_plugins.errors import DeviceNotFoundError
from exo_gpu_plugins.models import Capabilities
from exo_gpu_plugins.testing.contract._base import KitBase, clause
from exo_gpu_plugins.testing.contract._helpers import KiB, MiB, deferred, unknown_device_ids
from exo_gpu_plugins.testing.support import available_follows_allocations, pattern, plain_int

# Sizes an allocator is likely to file under different classes: bytes, pages, tens of kilobytes,
# around a MiB, and past the host backend's mapping threshold; each allocated and freed _CYCLES
# times, so that a leak of a granule or less per cycle adds up past the granularity.
_SIZE_CLASSES = (1, 100, 4 * KiB, 40_000, 256 * KiB + 1, 1 * MiB, 4 * MiB + 1)
_CYCLES = 4


class MemoryReportContract(KitBase):
    """get_device_memory_info: consistent figures that follow this process's allocations."""

    @clause("memory report")
    def test_report_is_consistent(self) -> None:
        for device in self.backend.list_devices():
            report = self.checked_report(device=device.device_id)
            assert report["total_bytes"] == report.total_bytes, "report['total_bytes'] differs"
            keys = set(report.keys())
            assert keys >= {"total_bytes", "used_bytes", "available_bytes"}, (
                f"report.keys() is {sorted(keys)}: the mapping lacks figures"
            )

    @clause("memory report")
    def test_report_refuses_unknown_device(self) -> None:
        b = self.backend
        self.expect_errors(
            DeviceNotFoundError,
            [
                (f"get_device_memory_info({bad!r})", deferred(b.get_device_memory_info, bad))
                for bad in unknown_device_ids(b)[:3]
            ],
        )

    @clause("memory report")
    def test_report_adds_up_while_memory_is_held(self) -> None:
        """Consistent figures with allocations live, not only at rest."""
        handles = []
        for size in _SIZE_CLASSES:
            handles.append(self.alloc(size))
            self.checked_report()
        for handle in handles:
            self.run(self.backend.deallocate(handle))
            self.checked_report()

    def probe_size(self) -> tuple[int, int]:
        """(bytes to allocate, granularity): 64 MiB, or 1/16 of a small device."""
        granularity = self.caps.allocation_granularity_bytes
        total = self.checked_report().total_bytes
        return max(1 * MiB, min(self.memory_probe_bytes, total // 16)) // MiB * MiB, granularity

    @clause("memory accounting")
    def test_allocation_moves_used_bytes(self) -> None:
        """used_bytes counts this process's memory: up by N on allocation, back down on free."""
        size, granularity = self.probe_size()
        before = self.checked_report()
        handle = self.alloc(size)
        held = self.checked_report()
        self.run(self.backend.deallocate(handle))
        after = self.checked_report()
        grew = held.used_bytes - before.used_bytes
        assert grew >= size - (granularity - 1), (
            f"used_bytes rose by {grew} after allocating {size} bytes"
        )
        left = after.used_bytes - before.used_bytes
        assert left <= granularity, (
            f"used_bytes stays {left} bytes up after freeing (granularity {granularity})"
        )

    @clause("memory accounting")
    def test_every_free_gives_memory_back(self) -> None:
        """After each free, used_bytes and (where it follows allocations) available_bytes are back
        at their level before, within the granularity: a free list that keeps freed memory, of
        one size class or of all, loses a little on every cycle, and the cycles add up.

        A driver's live budget (`memory_budget`) moves with other processes, so there only
        used_bytes, this process's own figure, is held to it."""
        caps = self.caps
        granularity = caps.allocation_granularity_bytes
        tracks_available = available_follows_allocations(caps) and not caps.memory_budget
        before = self.checked_report()
        for size in _SIZE_CLASSES:
            for cycle in range(1, _CYCLES + 1):
                self.run(self.backend.deallocate(self.alloc(size)))
                after = self.checked_report()
                moved = [("used_bytes", after.used_bytes - before.used_bytes, "above")]
                if tracks_available:
                    fell = before.available_bytes - after.available_bytes
                    moved.append(("available_bytes", fell, "below"))
                for name, by, where in moved:
                    assert by <= granularity, (
                        f"{name} is {by} bytes {where} its level after {cycle} cycles of allocating "
                        f"and freeing {size} bytes (granularity {granularity}): freed memory is not "
                        "given back (a free list that keeps what is freed, of this size class or "
                        "of every size?)"
                    )

    @clause("memory accounting")
    def test_allocation_lowers_available_bytes(self) -> None:
        """available_bytes falls by about N when this process allocates N bytes.

        The allocation is written in full before measuring, since some drivers commit memory on
        first touch. The figure is still noisy (other processes allocate too), so it gets a slack
        of max(granularity, 16 MiB) and three tries. Skipped only for a backend that declares
        `available_tracks_allocations=False` explicitly (see `available_follows_allocations`).
        """
        caps = self.caps
        if not available_follows_allocations(caps):
            pytest.skip(
                "capabilities(): available_tracks_allocations=False and memory_budget=False: "
                "available_bytes is an estimate from outside the process; only its consistency "
                "is checked"
            )
        size, granularity = self.probe_size()
        slack = max(granularity, 16 * MiB)
        data = pattern(41, 1 * MiB) * (size // MiB)
        drops: list[int] = []
        for _attempt in range(3):
            before = self.checked_report()
            handle = self.alloc(len(data), data)
            held = self.checked_report()
            self.run(self.backend.deallocate(handle))
            dropped = before.available_bytes - held.available_bytes
            if dropped >= len(data) - slack:
                return
            drops.append(dropped)
        raise AssertionError(
            f"available_bytes fell by only {max(drops)} bytes as {len(data)} were allocated; "
            "declare available_tracks_allocations=False if it cannot follow them\n"
            f"(falls of {', '.join(map(str, drops))} bytes in three tries, each allocation written "
            f"in full, slack {slack} bytes; {_promise(caps)}, which says available_bytes falls when "
            "this process allocates)"
        )

    def free_memory_figures(self) -> dict[str, object]:
        """memory_available as the three calls that describe a device give it, now."""
        b, device = self.backend, self.device
        listed = next(d for d in b.list_devices() if d.device_id == device)
        found = b.get_device(device)
        fresh = self.run(b.get_device_properties(device))
        return {
            "list_devices()": listed.memory_available,
            "get_device()": None if found is None else found.memory_available,
            "get_device_properties()": fresh.memory_available,
        }

    @clause("live free memory")
    def test_memory_available_is_live(self) -> None:
        """A device's memory_available is read anew on every call (the core asks _memory_report),
        so it falls while this process holds memory; with live figures it must be an int."""
        total = self.checked_report().total_bytes
        live = available_follows_allocations(self.caps)
        for call, value in self.free_memory_figures().items():
            if value is None and not live:
                continue
            assert plain_int(value) and 0 <= value <= total, (  # type: ignore[operator]
                f"{call}.memory_available is {value!r}: expected an int in [0, {total}]"
                + (" (the backend says its free memory follows allocations)" if live else "")
            )
        if not live:
            return  # an estimate from outside the process: range-checked above, nothing more
        size, granularity = self.probe_size()
        slack = max(granularity, 16 * MiB)
        data = pattern(42, 1 * MiB) * (size // MiB)
        falls: dict[str, list[int]] = {}
        for _attempt in range(3):
            before = self.free_memory_figures()
            handle = self.alloc(len(data), data)
            held = self.free_memory_figures()
            self.run(self.backend.deallocate(handle))
            short = {
                call: int(before[call]) - int(held[call])  # type: ignore[call-overload]
                for call in before
                if int(before[call]) - int(held[call]) < len(data) - slack  # type: ignore[call-overload]
            }
            if not short:
                return
            for call, fell in short.items():
                falls.setdefault(call, []).append(fell)
        worst = ", ".join(f"{call} by {max(fell)}" for call, fell in falls.items())
        raise AssertionError(
            f"memory_available fell only ({worst} bytes) as {len(data)} were allocated: the core "
            f"fills it from _memory_report(), whose available_bytes must follow allocations"
        )


def _promise(caps: Capabilities) -> str:
    if caps.memory_budget:
        return "capabilities() say memory_budget=True (live driver figures)"
    if caps.available_tracks_allocations:
        return "capabilities() say available_tracks_allocations=True"
    return "capabilities() leave available_tracks_allocations unset, the contract's default"
