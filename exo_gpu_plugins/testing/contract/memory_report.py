"""Clauses "memory report" and "memory accounting"."""

from __future__ import annotations

import pytest

from exo_gpu_plugins.errors import DeviceNotFoundError
from exo_gpu_plugins.testing.contract._base import KitBase, clause
from exo_gpu_plugins.testing.contract._helpers import MiB, deferred, unknown_device_ids
from exo_gpu_plugins.testing.state_machine import pattern


class MemoryReportContract(KitBase):
    """get_device_memory_info: consistent figures that follow this process's allocations."""

    @clause("memory report")
    def test_report_is_consistent(self) -> None:
        for device in self.backend.list_devices():
            report = self.checked_report(device=device.device_id)
            assert report["total_bytes"] == report.total_bytes, "report['total_bytes'] differs"
            assert set(report.keys()) >= {"total_bytes", "used_bytes", "available_bytes"}

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
    def test_allocation_lowers_available_bytes(self) -> None:
        """With live figures, available_bytes falls by about N when N bytes are allocated.

        The allocation is written in full before measuring, since some drivers commit memory on
        first touch. The figure is still noisy (other processes allocate too), so it gets a slack
        of max(granularity, 16 MiB) and three tries. Without `memory_budget` or
        `available_tracks_allocations` the figure is an OS estimate, which on virtual machines lags
        by seconds; only its consistency is checked then.
        """
        if not (self.caps.memory_budget or self.caps.available_tracks_allocations):
            pytest.skip(
                "capabilities(): neither memory_budget nor available_tracks_allocations; "
                "available_bytes is an OS estimate"
            )
        size, granularity = self.probe_size()
        slack = max(granularity, 16 * MiB)
        data = pattern(41, 1 * MiB) * (size // MiB)
        drops: list[str] = []
        for _attempt in range(3):
            before = self.checked_report()
            handle = self.alloc(len(data), data)
            held = self.checked_report()
            self.run(self.backend.deallocate(handle))
            dropped = before.available_bytes - held.available_bytes
            if dropped >= len(data) - slack:
                return
            drops.append(str(dropped))
        raise AssertionError(
            f"available_bytes fell by only {', '.join(drops)} bytes (three tries) while "
            f"{len(data)} bytes were allocated and written (slack {slack})"
        )
