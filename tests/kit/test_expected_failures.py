"""Expected-failures files: parsing, strict xfail marking, and warnings for stale entries."""

from __future__ import annotations

from pathlib import Path

import pytest

from exo_gpu_plugins.host.backend import HostBackend
from exo_gpu_plugins.testing import HandleContract
from exo_gpu_plugins.testing.check import run_kit
from exo_gpu_plugins.testing.expected_failures import (
    candidate_ids,
    match_expected_failures,
    parse,
)

from .broken_backends import DoubleFreeAccepted

ONLY_HANDLES = ["-k", "double_free or use_after_free"]


def test_parse_both_formats() -> None:
    entries = parse(
        "# comment\n"
        "\n"
        "test_a  # reason a\n"
        "TestX::test_b: reason b\n"
        "tests/t.py::TestX::test_c[host:0]: reason c\n"
        "test_d\n"
    )
    assert [(e.test_id, e.reason) for e in entries] == [
        ("test_a", "reason a"),
        ("TestX::test_b", "reason b"),
        ("tests/t.py::TestX::test_c[host:0]", "reason c"),
        ("test_d", "listed in <string>:6"),
    ]


def test_ids_match_name_tail_and_nodeid() -> None:
    ids = candidate_ids("t.py::TestX::test_c[1-2]", "test_c[1-2]", "test_c")
    entries = parse("test_c\nTestX::test_c[1-2]\nt.py::TestX::test_c[1-2]\ntest_zzz\n")
    matched, unmatched = match_expected_failures(entries, [("n", ids)])
    assert matched["n"].test_id == "test_c"
    assert [e.test_id for e in unmatched] == ["test_zzz"]


def test_listed_failure_becomes_xfail(tmp_path: Path) -> None:
    listed = tmp_path / "xfail.txt"
    listed.write_text(
        "test_double_free  # this backend ignores double frees\n"
        "test_use_after_free: also refuses nothing\n"
    )
    result = run_kit(DoubleFreeAccepted, xfail_file=listed, extra_args=ONLY_HANDLES)
    assert result.ok, result.failed_clauses()
    assert result.clauses["handles: double free"].xfailed == 1
    (test,) = [t for t in result.tests if t.name == "test_double_free"]
    assert (test.outcome, test.reason) == ("xfailed", "this backend ignores double frees")
    assert result.warnings == []


def test_listed_test_that_passes_fails_the_run(tmp_path: Path) -> None:
    listed = tmp_path / "xfail.txt"
    listed.write_text("test_double_free  # wrongly listed\n")
    result = run_kit(HostBackend, xfail_file=listed, extra_args=ONLY_HANDLES)
    assert not result.ok
    assert result.clauses["handles: double free"].failed == 1  # strict: XPASS is a failure


def test_unmatched_entry_warns(tmp_path: Path) -> None:
    listed = tmp_path / "xfail.txt"
    listed.write_text("test_no_such_test  # renamed long ago\n")
    result = run_kit(HostBackend, xfail_file=listed, extra_args=ONLY_HANDLES)
    assert result.ok
    assert any("test_no_such_test" in w and "match no collected test" in w for w in result.warnings), (
        result.warnings
    )


XFAIL_FILE = Path(__file__).with_name("double_free.xfail")


class TestClassAttributeExpectedFailures(HandleContract):
    """A broken backend with its known failures listed through the class attribute: the run is
    green, the listed tests report as xfailed (one mixin only, to keep this short)."""

    backend_class = DoubleFreeAccepted
    expected_failures_file = XFAIL_FILE


def test_class_attribute_file_exists() -> None:
    assert XFAIL_FILE.is_file()


@pytest.mark.parametrize("line", ["   ", "# only a comment"])
def test_blank_and_comment_lines_ignored(line: str) -> None:
    assert parse(line) == []
