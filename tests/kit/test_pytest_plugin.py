"""The pytest plugin: `--exo-gpu-backend`, `-p` loading, and doing nothing unless asked."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


class Outcomes:
    """Counts the reports of an inner pytest run."""

    def __init__(self) -> None:
        self.reports: list[pytest.TestReport] = []
        self.items: list[pytest.Item] = []

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        self.items = list(items)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or report.outcome != "passed":
            self.reports.append(report)

    def count(self, outcome: str) -> int:
        return sum(report.outcome == outcome for report in self.reports)


def inner(
    args: list[str], tmp_path: Path, *, autoload: bool, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, Outcomes]:
    """pytest.main in this process, isolated from the project's ini file."""
    ini = tmp_path / "pytest.ini"
    ini.write_text("[pytest]\n")
    if autoload:
        monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    else:
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    outcomes = Outcomes()
    code = pytest.main(
        [
            *args,
            "-c",
            str(ini),
            "--rootdir",
            str(tmp_path),
            "-q",
            "--import-mode=importlib",
            "-p",
            "no:cacheprovider",
        ],
        plugins=[outcomes],
    )
    return int(code), outcomes


def test_exo_gpu_backend_option_runs_the_kit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, outcomes = inner(
        [
            "-p",
            "exo_gpu_plugins.testing.pytest_plugin",
            "--exo-gpu-backend",
            "host",
            "--exo-gpu-examples",
            "3",
            "-k",
            "zero or state_machine",
        ],
        tmp_path,
        autoload=False,
        monkeypatch=monkeypatch,
    )
    assert code == 0
    assert outcomes.count("passed") >= 5
    assert all("::TestSelectedBackend::" in r.nodeid for r in outcomes.reports)
    assert all(dict(item.user_properties).get("exo_gpu_clause") for item in outcomes.items)


def test_unknown_backend_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _ = inner(
        ["-p", "exo_gpu_plugins.testing.pytest_plugin", "--exo-gpu-backend", "nope"],
        tmp_path,
        autoload=False,
        monkeypatch=monkeypatch,
    )
    assert code == pytest.ExitCode.USAGE_ERROR


def test_dash_p_coexists_with_autoload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`-p exo_gpu_plugins.testing.pytest_plugin` while the entry point autoloads the same module."""
    (tmp_path / "test_plain.py").write_text("def test_one():\n    assert True\n")
    code, outcomes = inner(
        [
            "-p",
            "exo_gpu_plugins.testing.pytest_plugin",
            "-p",
            "no:asyncio",
            str(tmp_path / "test_plain.py"),
        ],
        tmp_path,
        autoload=True,
        monkeypatch=monkeypatch,
    )
    assert code == 0 and outcomes.count("passed") == 1


def test_plain_projects_are_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "test_plain.py").write_text("def test_one():\n    assert True\n")
    code, outcomes = inner(
        ["-p", "exo_gpu_plugins.testing.pytest_plugin", str(tmp_path / "test_plain.py")],
        tmp_path,
        autoload=False,
        monkeypatch=monkeypatch,
    )
    assert code == 0 and outcomes.count("passed") == 1
    assert outcomes.items[0].user_properties == []


def test_loading_the_plugin_imports_neither_kit_nor_hypothesis() -> None:
    code = textwrap.dedent("""
        import sys
        import exo_gpu_plugins.testing.pytest_plugin
        heavy = [m for m in ("hypothesis", "exo_gpu_plugins.testing.contract",
                             "exo_gpu_plugins.testing.state_machine") if m in sys.modules]
        print(heavy)
    """)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]", f"loading the plugin imported {result.stdout.strip()}"


def test_the_contract_imports_no_hypothesis_until_the_state_machine_runs() -> None:
    """Every clause module but the state machine's runs without Hypothesis, so importing the kit
    (or running its example-based clauses) must not import it."""
    code = textwrap.dedent("""
        import sys
        import exo_gpu_plugins.testing.contract, exo_gpu_plugins.testing.selected
        print(sorted(m for m in sys.modules if m.split(".")[0] == "hypothesis")[:3])
    """)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]", f"importing the kit imported {result.stdout.strip()}"


def test_expected_failures_without_the_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Autoload off and no -p: the kit marks its class's expected failures itself."""
    listed = tmp_path / "known.txt"
    listed.write_text("test_double_free  # swallowed\n")
    module = tmp_path / "test_fallback_kit.py"
    module.write_text(
        textwrap.dedent(f"""
        from exo_gpu_plugins.testing import HandleContract
        from tests.kit.broken_backends import DoubleFreeAccepted

        class TestFallback(HandleContract):
            backend_class = DoubleFreeAccepted
            expected_failures_file = {str(listed)!r}
    """)
    )
    code, outcomes = inner(
        [str(module), "-k", "test_double_free"], tmp_path, autoload=False, monkeypatch=monkeypatch
    )
    assert code == 0
    assert len(outcomes.reports) == 1 and hasattr(outcomes.reports[0], "wasxfail")
