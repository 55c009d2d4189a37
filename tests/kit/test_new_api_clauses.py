"""The kit's clauses for the calls of version 0.2 catch each deliberately broken backend."""

from __future__ import annotations

import pytest

from exo_gpu_plugins.testing.check import run_kit

from .broken_new_api import BROKEN_NEW


@pytest.mark.parametrize("bug", sorted(BROKEN_NEW))
def test_kit_catches(bug: str) -> None:
    backend_class, clause, test = BROKEN_NEW[bug]
    result = run_kit(backend_class, extra_args=["-k", test])
    assert not result.errors, result.errors
    failed = [t for t in result.tests if t.outcome == "failed"]
    assert failed, f"{bug}: {test} passed"
    assert {t.clause for t in failed} == {clause}, [(t.name, t.clause) for t in failed]
    assert all(t.name.startswith(test) and t.reason for t in failed), [t.reason for t in failed]
