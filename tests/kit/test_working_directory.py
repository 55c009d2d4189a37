"""`exo-gpu check` and `pytest --exo-gpu-backend` leave the directory they run in as they found it:
no `.hypothesis/` (database or cached constants), no `.pytest_cache/`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "exo_gpu_plugins.cli", "check", "host", "--examples", "5"],
        ["-m", "pytest", "--exo-gpu-backend", "host", "--exo-gpu-examples", "5", "-q"],
    ],
    ids=["exo-gpu check", "pytest --exo-gpu-backend"],
)
def test_run_leaves_an_empty_directory_empty(tmp_path: Path, command: list[str]) -> None:
    empty = tmp_path / "cwd"
    empty.mkdir()
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PYTEST_", "HYPOTHESIS_"))  # as a user's shell would be
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, *command],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    left = sorted(str(path.relative_to(empty)) for path in empty.rglob("*"))
    assert left == [], f"{' '.join(command)} wrote into the working directory: {left}"
