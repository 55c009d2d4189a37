"""`exo-gpu check BACKEND`: run the conformance kit in-process and report one summary per clause.

The kit is plain pytest, so the check runs `pytest.main` on the kit's own module
(`exo_gpu_plugins.testing.selected`) with a small plugin object that hands it the backend factory
and collects every report. It isolates that run from the caller's project: an empty ini file, no
plugin autoloading, no cache, no Hypothesis database in the working directory.

pytest, Hypothesis and numpy are optional dependencies (the `testing` extra:
`pip install 'exo-gpu-plugins[testing]'`, or `pip install -e '.[testing]'` in a checkout), so they
are imported only when a check runs, and their absence is a one-line message with exit status 2.

`run_check` returns a `CheckReport` (its `exit_code`: 0 when nothing failed, skips and expected
failures being fine; 1 when a test failed; 2 when the backend, or the kit, cannot be loaded);
`exo-gpu check` draws it as the clause table or prints its JSON.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest

    from exo_gpu_plugins.backend import GPUBackend
    from exo_gpu_plugins.registry import Registry

__all__ = ["CheckReport", "ClauseSummary", "KitResult", "TestOutcome", "run_check", "run_kit"]

BackendFactory = Callable[[], "GPUBackend[Any]"]


def _install_advice() -> str:
    """How to install the kit's dependencies, for the way this package was installed: from a
    checkout (an editable install) or from an index or wheel."""
    from importlib import metadata

    advice = "the conformance kit needs pytest, hypothesis and numpy: "
    try:
        origin = metadata.distribution("exo-gpu-plugins").read_text("direct_url.json") or ""
    except metadata.PackageNotFoundError:
        origin = ""
    if '"editable": true' in origin.replace("'", '"'):
        return advice + "pip install -e '.[testing]' in an exo-gpu-plugins checkout"
    return advice + "pip install 'exo-gpu-plugins[testing]'"


_FAILING = ("failed", "error")
_AUTOLOAD_ENV = "PYTEST_DISABLE_PLUGIN_AUTOLOAD"


@dataclass
class TestOutcome:
    """One kit test: its outcome ('passed', 'failed', 'error', 'skipped', 'xfailed') and why."""

    __test__ = False  # not a pytest test class, despite the name

    nodeid: str
    name: str
    clause: str
    outcome: str = "passed"
    reason: str = ""
    duration_s: float = 0.0

    @property
    def failed(self) -> bool:
        """Failed, errored, or passed while listed as an expected failure (strict)."""
        return self.outcome in _FAILING


@dataclass
class ClauseSummary:
    """Counts for one clause of the contract, and its first failure."""

    clause: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    xfailed: int = 0
    first_failure: str | None = None
    first_reason: str | None = None
    failures: list[str] = field(default_factory=list)
    first_skip_reason: str | None = None


@dataclass
class KitResult:
    """Everything one kit run produced."""

    label: str
    tests: list[TestOutcome]
    clauses: dict[str, ClauseSummary]
    exit_code: int
    duration_s: float
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No test failed and the run itself went through."""
        return not self.errors and not any(test.failed for test in self.tests) and bool(self.tests)

    def totals(self) -> dict[str, int]:
        """How many tests ended each way."""
        counts = {"passed": 0, "failed": 0, "skipped": 0, "xfailed": 0}
        for test in self.tests:
            counts["failed" if test.failed else test.outcome] += 1
        return counts

    def failed_clauses(self) -> list[str]:
        """Clauses with at least one failing test, in the contract's order."""
        return [name for name, summary in self.clauses.items() if summary.failed]


class _Collector:
    """Plugin object for the inner pytest run: gives it the factory, keeps its reports."""

    def __init__(self, factory: BackendFactory, device_id: str | None) -> None:
        self.factory = factory
        self.device_id = device_id
        self.tests: dict[str, TestOutcome] = {}
        self.warnings: list[str] = []
        self.errors: list[str] = []

    def pytest_configure(self, config: pytest.Config) -> None:
        from exo_gpu_plugins.testing import pytest_plugin

        config.stash[pytest_plugin.FACTORY_KEY] = self.factory
        config.stash[pytest_plugin.NO_DATABASE_KEY] = True
        if self.device_id is not None:
            config.stash[pytest_plugin.DEVICE_KEY] = self.device_id

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        from exo_gpu_plugins.testing.contract import clause_of

        for item in items:
            self.tests[item.nodeid] = TestOutcome(item.nodeid, _short(item.nodeid), clause_of(item))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.errors.append(f"collecting {report.nodeid or 'the kit'}: {_reason(report)}")

    def pytest_warning_recorded(self, warning_message: Any, when: str, nodeid: str) -> None:
        self.warnings.append(str(warning_message.message))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        test = self.tests.get(report.nodeid)
        if test is None:
            test = self.tests[report.nodeid] = TestOutcome(report.nodeid, _short(report.nodeid), "other")
        test.duration_s += report.duration
        outcome = _outcome(report)
        if outcome is None or test.outcome in _FAILING:
            return
        if report.when == "teardown" and outcome != "error":
            return
        test.outcome = outcome
        if outcome != "passed":
            test.reason = _reason(report)


def _outcome(report: pytest.TestReport) -> str | None:
    if report.failed:
        return "failed" if report.when == "call" else "error"
    if report.skipped:
        return "xfailed" if hasattr(report, "wasxfail") else "skipped"
    return "passed" if report.when == "call" else None


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The exception's whole message (every line: the kit's messages put the first cause first
    and what it found after it), the skip reason, or the xfail reason."""
    wasxfail = getattr(report, "wasxfail", None)
    if report.skipped and wasxfail is not None:
        return str(wasxfail)
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # skip: (path, line, reason)
        text = str(longrepr[2]).removeprefix("Skipped: ")
    else:
        crash = getattr(longrepr, "reprcrash", None)
        text = str(crash.message) if crash is not None else str(longrepr)
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines) if lines else "no message"


def _short(nodeid: str) -> str:
    """The test's name with its parameters: what an expected-failures file would list."""
    return nodeid.rsplit("::", 1)[-1]


def run_kit(
    factory: BackendFactory,
    *,
    label: str | None = None,
    xfail_file: str | Path | None = None,
    examples: int | None = None,
    steps: int | None = None,
    device_id: str | None = None,
    verbose: bool = False,
    extra_args: Sequence[str] = (),
) -> KitResult:
    """Run the whole kit against backends made by `factory` (a backend class or a function).

    The run happens in this process with `pytest.main`; pytest's own output is shown only with
    `verbose`. `extra_args` go to pytest as they are (e.g. `["-k", "zero"]`).
    """
    import pytest

    from exo_gpu_plugins.testing import contract, pytest_plugin

    collector = _Collector(factory, device_id)
    args = [str(pytest_plugin.SELECTED_MODULE)]
    args += ["-p", "exo_gpu_plugins.testing.pytest_plugin", "-p", "no:cacheprovider"]
    args += ["--assert=plain", "--import-mode=importlib"]
    args += ["-v", "--tb=short", "-rfE"] if verbose else ["-p", "no:terminal"]
    if xfail_file is not None:
        args += ["--exo-gpu-xfail", str(xfail_file)]
    if examples is not None:
        args += ["--exo-gpu-examples", str(examples)]
    if steps is not None:
        args += ["--exo-gpu-steps", str(steps)]
    args += list(extra_args)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="exo-gpu-check-") as scratch:
        ini = Path(scratch) / "pytest.ini"
        ini.write_text("[pytest]\n", encoding="utf-8")
        args += ["-c", str(ini), "--rootdir", str(pytest_plugin.SELECTED_MODULE.parent)]
        with _without_plugin_autoload():
            exit_code = int(pytest.main(args, plugins=[collector]))
    duration = time.perf_counter() - started
    tests = list(collector.tests.values())
    errors = list(collector.errors)
    if exit_code not in (0, 1) and not errors:
        errors.append(f"pytest stopped with exit status {exit_code}")
    if not tests and not errors:
        errors.append("the kit collected no tests")
    return KitResult(
        label=label or str(getattr(factory, "__name__", repr(factory))),
        tests=tests,
        clauses=_summarize(tests, contract.CLAUSES),
        exit_code=exit_code,
        duration_s=duration,
        warnings=collector.warnings,
        errors=errors,
    )


@contextmanager
def _without_plugin_autoload() -> Iterator[None]:
    """Turn off plugin autoloading for the inner run: the caller's other plugins (asyncio modes,
    random ordering, coverage) must not change what the kit does."""
    saved = os.environ.get(_AUTOLOAD_ENV)
    os.environ[_AUTOLOAD_ENV] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(_AUTOLOAD_ENV, None)
        else:
            os.environ[_AUTOLOAD_ENV] = saved


def _summarize(tests: list[TestOutcome], order: Sequence[str]) -> dict[str, ClauseSummary]:
    rank = {name: i for i, name in enumerate(order)}
    summaries: dict[str, ClauseSummary] = {}
    for test in sorted(tests, key=lambda t: rank.get(t.clause, len(rank))):
        summary = summaries.setdefault(test.clause, ClauseSummary(test.clause))
        if test.failed:
            summary.failed += 1
            summary.failures.append(test.name)
            if summary.first_failure is None:
                summary.first_failure, summary.first_reason = test.name, test.reason
        elif test.outcome == "skipped":
            summary.skipped += 1
            summary.first_skip_reason = summary.first_skip_reason or test.reason
        elif test.outcome == "xfailed":
            summary.xfailed += 1
        else:
            summary.passed += 1
    return summaries


# --------------------------------------------------------------------------------------------------
# The CLI's entry


class _CannotLoad(Exception):
    """The backend cannot be tested here; the message is the one line the user sees."""


def _load_backend(name: str, registry: Registry | None) -> BackendFactory:
    from exo_gpu_plugins.registry import get_registry

    try:
        entry = (registry or get_registry()).entry(name)
        reason = entry.unavailable_reason()
        if reason is not None:
            raise _CannotLoad(f"backend {name!r} cannot run here: {reason}")
        backend_class = entry.load_class()
    except _CannotLoad:
        raise
    except Exception as exc:
        raise _CannotLoad(f"cannot load backend {name!r}: {type(exc).__name__}: {exc}") from exc
    try:
        asyncio.run(_open_and_close(backend_class))
    except Exception as exc:
        raise _CannotLoad(f"backend {name!r} does not initialize: {type(exc).__name__}: {exc}") from exc
    return backend_class


async def _open_and_close(factory: BackendFactory) -> None:
    backend = factory()
    await backend.initialize()
    await backend.shutdown()


@dataclass
class CheckReport:
    """What `exo-gpu check BACKEND` found: the kit's result, or the one-line reason it could not
    run (`error`, with exit code 2)."""

    backend: str
    exit_code: int
    result: KitResult | None = None
    backend_class: str | None = None  # module.qualname of the class the registry gave
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The `exo-gpu check --json` record."""
        if self.result is None:
            return {"backend": self.backend, "status": "error", "exit_code": 2, "error": self.error}
        result = self.result
        return {
            "backend": result.label,
            "backend_class": self.backend_class,
            "status": "pass" if self.exit_code == 0 else "fail",
            "exit_code": self.exit_code,
            "duration_s": round(result.duration_s, 3),
            "totals": result.totals(),
            "clauses": [asdict(summary) for summary in result.clauses.values()],
            "tests": [asdict(test) for test in result.tests],
            "warnings": result.warnings,
            "errors": result.errors,
        }


def run_check(
    backend: str,
    *,
    xfail_file: str | None = None,
    examples: int | None = None,
    verbose: bool = False,
    registry: Registry | None = None,
) -> CheckReport:
    """Run the kit against the installed backend `backend`. `verbose` shows pytest's own output
    as it runs; `registry` defaults to the process registry."""

    def cannot(message: str) -> CheckReport:
        return CheckReport(backend, 2, error=message)

    try:
        import hypothesis  # noqa: F401
        import pytest  # noqa: F401
    except ImportError as exc:
        return cannot(f"{_install_advice()} ({exc})")
    if xfail_file is not None and not Path(xfail_file).is_file():
        return cannot(f"expected-failures file {xfail_file} does not exist")
    try:
        factory = _load_backend(backend, registry)
    except _CannotLoad as exc:
        return cannot(str(exc))
    result = run_kit(factory, label=backend, xfail_file=xfail_file, examples=examples, verbose=verbose)
    from exo_gpu_plugins.testing.pytest_plugin import name_mismatch

    mismatch = name_mismatch(backend, factory)
    if mismatch is not None:
        result.warnings.insert(0, mismatch)
    return CheckReport(backend, 0 if result.ok else 1, result, _qualified(factory))


def _qualified(factory: BackendFactory) -> str:
    module = getattr(factory, "__module__", "")
    name = getattr(factory, "__qualname__", repr(factory))
    return f"{module}.{name}" if module else name
