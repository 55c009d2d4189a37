"""Clauses "handles: ..." (freed, double-freed, forged, foreign handles) and "shutdown frees memory"."""

from __future__ import annotations

import os

from exo_gpu_plugins.errors import BackendClosedError, InvalidHandleError
from exo_gpu_plugins.models import MemoryHandle
from exo_gpu_plugins.testing.contract._base import KitBase, clause
from exo_gpu_plugins.testing.contract._helpers import MiB
from exo_gpu_plugins.testing.support import available_follows_allocations, pattern


class HandleContract(KitBase):
    """Freed, double-freed, forged and foreign handles are refused with InvalidHandleError."""

    @clause("handles: use after free")
    def test_use_after_free(self) -> None:
        good = self.alloc(64, b"g" * 64)
        dead = self.alloc(64, b"x" * 64)
        self.run(self.backend.deallocate(dead))
        with self.canary_kept("calls with a freed handle"):
            self.expect_errors(InvalidHandleError, self.handle_calls(dead, good))
        self.assert_content(good, b"g" * 64, "live allocation after calls with a freed handle")

    @clause("handles: double free")
    def test_double_free(self) -> None:
        handle = self.alloc(64)
        self.run(self.backend.deallocate(handle))
        with self.canary_kept("a double free"):
            self.expect_error(
                InvalidHandleError,
                lambda: self.backend.deallocate(handle),
                "second deallocate() of one handle",
            )
            other = self.alloc(64, b"o" * 64)  # the freed memory may be reused here
            self.expect_error(
                InvalidHandleError,
                lambda: self.backend.deallocate(handle),
                "third deallocate() after the memory was reused",
            )
            self.assert_content(other, b"o" * 64, "allocation made after the double free")

    @clause("handles: forged")
    def test_forged_handles(self) -> None:
        real = self.alloc(4096, pattern(31, 4096))
        good = self.alloc(64, b"g" * 64)
        forged = {
            "a random id": MemoryHandle(
                handle_id=os.urandom(16).hex(),
                device_id=self.device,
                size_bytes=4096,
                allocated_at=real.allocated_at,
            ),
            "the real id with a larger size": real.model_copy(update={"size_bytes": 8192}),
            "the real id with a smaller size": real.model_copy(update={"size_bytes": 16}),
            "the real id on another device": real.model_copy(
                update={"device_id": f"{self.backend.name}:4096"}
            ),
        }
        with self.canary_kept("calls with forged handles"):
            for label, fake in forged.items():
                cases = [(f"{call} with {label}", fn) for call, fn in self.handle_calls(fake, good)]
                self.expect_errors(InvalidHandleError, cases)
        self.assert_content(real, pattern(31, 4096), "the real allocation after forged calls")
        self.run(self.backend.deallocate(real))

    @clause("handles: foreign")
    def test_handles_of_another_instance(self) -> None:
        other = self.open_backend()
        theirs = self.alloc(64, b"t" * 64, backend=other)
        good = self.alloc(64, b"g" * 64)
        with self.canary_kept("calls with another instance's handle"):
            self.expect_errors(InvalidHandleError, self.handle_calls(theirs, good))
        self.assert_content(theirs, b"t" * 64, "the other instance's allocation", backend=other)
        self.run(other.deallocate(theirs))

    @clause("shutdown frees memory")
    def test_shutdown_frees_every_allocation(self) -> None:
        """used_bytes is per process, so a new instance sees what a closed one left behind."""
        probe = self.open_backend()
        device = self.device_of(probe)
        granularity = probe.capabilities(device).allocation_granularity_bytes
        total = self.checked_report(probe, device).total_bytes
        size = min(max(4 * MiB, 2 * granularity + 1), max(total // 16, 1))
        opened = self.checked_report(probe, device)
        before, available_before = opened.used_bytes, opened.available_bytes
        self.run(probe.shutdown())

        doomed = self.open_backend()
        handles = [self.alloc(size // 4 + 1, backend=doomed, device=device) for _ in range(4)]
        held = self.checked_report(doomed, device).used_bytes
        assert held - before >= size - granularity, (
            f"used_bytes rose by {held - before} after allocating {size + 4} bytes"
        )
        self.run(doomed.shutdown())
        assert doomed.live_handles() == [], "live_handles() not empty after shutdown"
        self.expect_errors(
            BackendClosedError,
            [
                (f"{call} on the closed instance", fn)
                for call, fn in self.handle_calls(handles[0], handles[1], backend=doomed)
            ],
        )

        fresh = self.open_backend()
        after = self.checked_report(fresh, device)
        assert after.used_bytes - before <= granularity, (
            f"after shutdown, used_bytes is {after.used_bytes - before} bytes above its "
            f"level before the allocations (granularity {granularity}): shutdown did not free them"
        )
        caps = fresh.capabilities(device)
        if available_follows_allocations(caps) and not caps.memory_budget:
            fell = available_before - after.available_bytes
            assert fell <= granularity, (
                f"after shutdown, available_bytes is {fell} bytes below its level before the "
                f"allocations (granularity {granularity}): the memory shutdown freed was not given "
                "back to the allocator"
            )
