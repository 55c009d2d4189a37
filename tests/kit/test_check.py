"""`run_check`, the function behind `exo-gpu check BACKEND`, drawn by the CLI: table, JSON, and exit
statuses."""

from __future__ import annotations

import io
import json
import sys

import pytest

from exo_gpu_plugins.cli import check as check_command
from exo_gpu_plugins.cli.render import Screen
from exo_gpu_plugins.errors import BackendUnavailableError
from exo_gpu_plugins.hookspecs import BackendInfo
from exo_gpu_plugins.host.backend import HostBackend
from exo_gpu_plugins.registry import BackendEntry, PluginRecord, Registry
from exo_gpu_plugins.testing import check as kit_check

from .broken_backends import DoubleFreeAccepted


def run_check(
    backend: str,
    *,
    out: io.StringIO | None = None,
    err: io.StringIO | None = None,
    json_output: bool = False,
    verbose: bool = False,
    **options: object,
) -> int:
    """`exo-gpu check` in-process: the kit's report, drawn by the CLI; returns the exit status."""
    report = kit_check.run_check(backend, verbose=verbose and not json_output, **options)  # type: ignore[arg-type]
    screen = Screen(out or io.StringIO(), err or io.StringIO())
    return check_command.show(report, screen, as_json=json_output, verbose=verbose)


class Unopenable(HostBackend):
    def _open(self) -> None:
        raise BackendUnavailableError("no driver on this machine")


def registry_with(**backends: BackendInfo) -> Registry:
    """A registry holding only the given backends, as if a plugin had provided them."""
    registry = Registry()
    for name, info in backends.items():
        record = PluginRecord(name, f"{name}-dist", "0", "tests.kit", "loaded", (name,))
        registry.backends[name] = BackendEntry(info, record)
    return registry


def test_host_passes() -> None:
    out = io.StringIO()
    assert run_check("host", examples=5, out=out) == 0
    text = out.getvalue()
    assert "PASS" in text
    for clause in (
        "lifecycle",
        "allocation zero-fill",
        "copy bounds",
        "handles: use after free",
        "state machine",
    ):
        assert clause in text


def test_json_output() -> None:
    out = io.StringIO()
    status = run_check("host", examples=5, json_output=True, out=out)
    data = json.loads(out.getvalue())
    assert status == 0, [(t["name"], t["reason"]) for t in data["tests"] if t["outcome"] != "passed"]
    assert data["status"] == "pass" and data["exit_code"] == 0
    assert data["backend_class"] == "exo_gpu_plugins.host.backend.HostBackend"
    clauses = {row["clause"]: row for row in data["clauses"]}
    assert clauses["cross-device copy"]["skipped"] == 1
    assert data["totals"]["failed"] == 0


def test_broken_backend_fails_and_names_the_clause() -> None:
    registry = registry_with(broken=BackendInfo(name="broken", backend=DoubleFreeAccepted))
    out = io.StringIO()
    assert run_check("broken", examples=5, out=out, registry=registry) == 1
    text = out.getvalue()
    row = next(line for line in text.splitlines() if line.startswith("handles: double free"))
    assert "test_double_free" in row and "InvalidHandleError" in row
    assert "FAIL" in text and "failing clauses: " in text


def test_unknown_backend_is_status_2() -> None:
    err = io.StringIO()
    assert run_check("no-such-backend", out=io.StringIO(), err=err) == 2
    assert "unknown GPU backend 'no-such-backend'" in err.getvalue()
    assert err.getvalue().count("\n") == 1  # one line


def test_unavailable_backend_is_status_2() -> None:
    registry = registry_with(
        gone=BackendInfo(name="gone", backend=HostBackend, probe=lambda: "no device found"),
        closed=BackendInfo(name="closed", backend=Unopenable),
    )
    err = io.StringIO()
    assert run_check("gone", registry=registry, err=err) == 2
    assert "cannot run here: no device found" in err.getvalue()
    out = io.StringIO()
    assert run_check("closed", registry=registry, json_output=True, out=out) == 2
    data = json.loads(out.getvalue())
    assert data["status"] == "error" and "no driver on this machine" in data["error"]


class Misnamed(HostBackend):
    """Registered as "other" but named "host": its devices would be host:0."""


def test_backend_named_unlike_its_entry_is_warned_about() -> None:
    registry = registry_with(other=BackendInfo(name="other", backend=Misnamed))
    out = io.StringIO()
    assert run_check("other", registry=registry, out=out, examples=5) != 2  # it runs, and warns
    assert "warning: the registry's backend 'other' is Misnamed, whose name is 'host'" in out.getvalue()
    assert "set Misnamed.name = 'other'" in out.getvalue()


def test_missing_xfail_file_is_status_2(tmp_path) -> None:
    err = io.StringIO()
    assert run_check("host", xfail_file=str(tmp_path / "nope.txt"), err=err) == 2
    assert "nope.txt" in err.getvalue()


def test_missing_dependencies_are_status_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hypothesis", None)
    err = io.StringIO()
    assert run_check("host", err=err) == 2
    # The advice fits the install: a checkout's editable one, or a wheel's (the GPU machine's).
    assert kit_check._install_advice() in err.getvalue()
    assert "needs pytest, hypothesis and numpy: pip install" in err.getvalue()
