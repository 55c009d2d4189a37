"""Failures name their first cause: the message an author reads must point at the bug, not at a
symptom further down (a copied range, Hypothesis' flakiness report)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings as HypothesisSettings

from exo_gpu_plugins.host.backend import HostBackend
from exo_gpu_plugins.testing.check import KitResult, run_kit
from exo_gpu_plugins.testing.state_machine import kit_settings, run_state_machine

from .broken_messages import AvailableNeverFalls, DeclaredEstimate, DirtyReuse, StateOutlivesInstance

# Derandomized: the same programs every run, so these tests do not depend on Hypothesis' luck.
FIXED = HypothesisSettings(kit_settings(200, 25, database=False), derandomize=True)
_DERANDOMIZED = "exo-gpu-failure-messages"


@pytest.fixture(autouse=True)
def _no_leftovers() -> Iterator[None]:
    StateOutlivesInstance.leftovers.clear()
    yield
    StateOutlivesInstance.leftovers.clear()


def only(backend: type[HostBackend], test: str) -> tuple[KitResult, str]:
    """Run one kit test, derandomized (the kit's settings inherit the loaded profile, so a run
    cannot miss the bug by luck); its outcome and one-line reason."""
    HypothesisSettings.register_profile(_DERANDOMIZED, derandomize=True, database=None)
    HypothesisSettings.load_profile(_DERANDOMIZED)
    try:
        result = run_kit(backend, examples=200, extra_args=["-k", test])
    finally:
        HypothesisSettings.load_profile("default")
    assert not result.errors, result.errors
    (outcome,) = [t for t in result.tests if t.name == test]
    return result, f"{outcome.outcome}: {outcome.reason}"


def test_mixed_tasks_blames_zero_fill_not_the_copy() -> None:
    _, reason = only(DirtyReuse, "test_mixed_tasks")
    assert reason.startswith("failed: "), reason
    assert "fresh memory is not zero-filled" in reason, reason
    assert "bytes before the copied range changed" not in reason, reason


def test_state_machine_names_memory_reused_without_clearing() -> None:
    with pytest.raises(AssertionError) as caught:
        run_state_machine(DirtyReuse, settings=FIXED)
    text = str(caught.value)
    assert "diverges from the model" in text.splitlines()[0], text
    assert "freed earlier: freed memory was handed out again without being cleared" in text, text


def test_state_machine_reports_the_error_behind_hypothesis_flakiness() -> None:
    with pytest.raises(AssertionError) as caught:
        run_state_machine(StateOutlivesInstance, settings=FIXED)
    text = str(caught.value)
    first = text.splitlines()[0]
    assert first.startswith("fresh allocation: backend diverges from the model at byte"), text
    assert "backend state outlives its instance: instance " in text, text
    assert "Inconsistent data generation" not in first, text


def test_check_table_shows_the_inner_error() -> None:
    result, reason = only(StateOutlivesInstance, "test_state_machine")
    assert result.clauses["state machine"].failed == 1, "the state machine passed a broken backend"
    first = reason.splitlines()[0]
    assert "diverges from the model" in first and "Flaky" not in first, reason
    # The whole message, not its first line: the diagnosis on the next line reaches the table too.
    assert "backend state outlives its instance: instance " in reason, reason


def test_available_bytes_that_never_fall_are_caught() -> None:
    _, reason = only(AvailableNeverFalls, "test_allocation_lowers_available_bytes")
    assert reason.startswith("failed: "), reason
    assert "available_bytes fell by only" in reason, reason
    assert "declare available_tracks_allocations=False if it cannot follow them" in reason


def test_declared_estimate_is_skipped_with_the_flag_named() -> None:
    _, reason = only(DeclaredEstimate, "test_allocation_lowers_available_bytes")
    assert reason.startswith("skipped: "), reason
    assert "available_tracks_allocations=False" in reason, reason
