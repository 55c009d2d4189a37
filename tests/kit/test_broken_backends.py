"""The kit must catch each deliberately broken backend, in the clause that its bug breaks."""

from __future__ import annotations

import pytest

from exo_gpu_plugins.host.backend import HostBackend
from exo_gpu_plugins.testing.check import run_kit

from .broken_backends import BROKEN


@pytest.mark.parametrize("bug", sorted(BROKEN))
def test_kit_catches(bug: str) -> None:
    backend_class, clause = BROKEN[bug]
    # The state machine is left out here (test_state_machine.py runs it on a broken backend): when
    # it finds a bug, shrinking the program costs seconds that this list would pay ten times.
    result = run_kit(backend_class, extra_args=["-k", "not test_state_machine"])
    assert not result.errors, result.errors
    assert not result.ok, f"the kit passed {backend_class.__name__} ({bug})"
    summary = result.clauses[clause]
    assert summary.failed, f"{bug}: clause {clause!r} passed; failing clauses: {result.failed_clauses()}"
    assert summary.first_reason, "a failing clause must say why"


def test_kit_passes_host_in_process() -> None:
    """The same in-process machinery reports a clean run for the reference backend."""
    result = run_kit(HostBackend, examples=5, steps=10)
    assert result.ok, {name: s.first_reason for name, s in result.clauses.items() if s.failed}
    assert result.clauses["cross-device copy"].skipped == 1  # one device: skipped by device count
