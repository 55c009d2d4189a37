"""`exo-gpu check` at its default settings catches each defect of broken_causes.py, in time, and the
table names the cause; the free-list backend those fixtures derive from passes."""

from __future__ import annotations

import io
import itertools
import json
import re

import pytest

from exo_gpu_plugins.hookspecs import BackendInfo
from exo_gpu_plugins.host.backend import HostBackend

from .broken_causes import CAUSES
from .free_list import FreeListBackend
from .test_check import registry_with, run_check

# The bound for a defect to be caught on the CI machine (2 shared cores).
SECONDS = 30.0


def check(backend: type[HostBackend]) -> tuple[int, str, float]:
    """`exo-gpu check` of `backend` at its default settings: status, table, seconds it took."""
    registry = registry_with(**{backend.name: BackendInfo(name=backend.name, backend=backend)})
    out = io.StringIO()
    status = run_check(backend.name, out=out, registry=registry)
    text = out.getvalue()
    took = re.search(r" tests in ([0-9.]+) s", text)
    assert took, f"no run time in the table's header:\n{text}"
    return status, text, float(took.group(1))


def row(table: str, clause: str) -> str:
    """A clause's row with the lines of its message under it."""
    lines = table.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(f"{clause}  ")), None)
    assert start is not None, f"no row for clause {clause!r}:\n{table}"
    rest = itertools.takewhile(lambda line: line.startswith(" "), lines[start + 1 :])
    return "\n".join([lines[start], *rest])


@pytest.mark.parametrize("defect", sorted(CAUSES))
def test_check_names_the_cause(defect: str) -> None:
    cause = CAUSES[defect]
    status, table, seconds = check(cause.backend)
    assert status == 1, f"exo-gpu check passed {cause.backend.__name__} ({defect}):\n{table}"
    for clause, words in cause.rows.items():
        found = row(table, clause)
        missing = [text for text in words if text not in found]
        assert not missing, f"{defect}: the {clause!r} row lacks {missing}:\n{found}\n\n{table}"
    assert seconds < SECONDS, f"{defect}: the check took {seconds} s, more than {SECONDS} s"


def test_free_list_backend_passes() -> None:
    """The base of the accounting fixtures is a correct sub-allocator: the accounting clauses
    hold it to nothing a real free list cannot keep."""
    status, table, _ = check(FreeListBackend)
    assert status == 0, f"exo-gpu check failed the correct free-list backend:\n{table}"


def test_json_carries_each_whole_message() -> None:
    """`--json` has the same whole message as the table, every line of it."""
    backend = CAUSES["small reads ignore the offset"].backend
    registry = registry_with(**{backend.name: BackendInfo(name=backend.name, backend=backend)})
    out = io.StringIO()
    assert run_check(backend.name, json_output=True, out=out, registry=registry) == 1, out.getvalue()
    clauses = {summary["clause"]: summary for summary in json.loads(out.getvalue())["clauses"]}
    reason = clauses["allocation"]["first_reason"]
    lines = reason.splitlines()
    assert len(lines) >= 2, f"the JSON's first_reason is not the whole message: {reason!r}"
    assert lines[0].startswith("AssertionError: wrong read: copy_from_device(offset="), reason
    assert lines[1].startswith("(found when this test failed with: "), reason
