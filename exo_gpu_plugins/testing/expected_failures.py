"""Expected-failures files: the tests a backend knowingly fails, each with the reason.

A backend that cannot keep one clause yet (a driver bug, a missing feature) should still run the rest
of the kit in CI. Listing the failing tests, with a reason, keeps the gap visible: each listed test is
marked `xfail(strict=True)`, so it fails the run the day it starts passing (the entry must then be
removed), and an entry that names no collected test is reported, so a renamed test cannot leave a
stale entry behind.

Format, one entry a line; blank lines and lines starting with `#` are ignored:

    test_reused_memory_reads_zeros            # driver recycles pages without clearing
    TestMyBackend::test_cross_device_copy: peer copies are not wired up yet

An id is a test name (all its parametrizations), a name with parameters (`test_x[1-7]`), any
`::`-separated tail of a node id, or a full node id.

This module imports nothing from pytest, so the plugin can use it without cost.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ExpectedFailure",
    "candidate_ids",
    "load_expected_failures",
    "match_expected_failures",
    "parse",
]

# The id ends at the first ':' followed by whitespace or the end of the line, so '::' in node ids
# and ':' inside parameters (`[host:0]`) stay part of the id.
_COLON_REASON = re.compile(r"^(?P<id>\S+?):(?:\s+(?P<reason>.*))?$")


@dataclass(frozen=True)
class ExpectedFailure:
    """One entry of an expected-failures file."""

    test_id: str
    reason: str
    source: str
    line: int

    def matches(self, candidates: Iterable[str]) -> bool:
        """True when the entry names one of a test's ids (see `candidate_ids`)."""
        return self.test_id in candidates


def parse(text: str, source: str = "<string>") -> list[ExpectedFailure]:
    """The entries of an expected-failures file's text; `source` names it in reasons and warnings."""
    entries: list[ExpectedFailure] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        test_id, reason = _split(line)
        if not test_id:
            continue
        entries.append(
            ExpectedFailure(test_id, reason or f"listed in {source}:{number}", source, number)
        )
    return entries


def _split(line: str) -> tuple[str, str]:
    if "#" in line:
        head, _, reason = line.partition("#")
        return head.strip().rstrip(":").strip(), reason.strip()
    match = _COLON_REASON.match(line)
    if match is not None:
        return match.group("id"), (match.group("reason") or "").strip()
    head, _, rest = line.partition(" ")
    return head, rest.strip()


def load_expected_failures(path: str | Path) -> list[ExpectedFailure]:
    """Read and parse a file; `OSError` when it cannot be read (a typo in the path is an error)."""
    file = Path(path)
    return parse(file.read_text(encoding="utf-8"), str(file))


def candidate_ids(nodeid: str, name: str, originalname: str) -> set[str]:
    """Every id under which an expected-failures entry may name this test."""
    parts = nodeid.split("::")
    ids = {"::".join(parts[i:]) for i in range(len(parts))}
    ids.update({nodeid, name, originalname})
    return ids


def match_expected_failures(
    entries: Sequence[ExpectedFailure], tests: Iterable[tuple[str, set[str]]]
) -> tuple[dict[str, ExpectedFailure], list[ExpectedFailure]]:
    """Pair tests with entries: ({test key: entry}, entries that matched no test).

    `tests` yields (key, ids) pairs, the ids from `candidate_ids`; the first matching entry wins.
    """
    matched: dict[str, ExpectedFailure] = {}
    used: set[int] = set()
    for key, ids in tests:
        for index, entry in enumerate(entries):
            if entry.matches(ids):
                used.add(index)
                matched.setdefault(key, entry)
    unmatched = [entry for index, entry in enumerate(entries) if index not in used]
    return matched, unmatched
