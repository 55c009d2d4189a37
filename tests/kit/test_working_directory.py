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
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PYTEST_", "HYPOTHESIS_"))  # as a user's shell would be
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))

    def left_by(arguments: list[str], folder: str, status: int = 0) -> list[str]:
        empty = tmp_path / folder
        empty.mkdir()
        result = subprocess.run(
            [sys.executable, *arguments],
            cwd=empty,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == status, f"{arguments} failed:\n{result.stdout}\n{result.stderr}"
        return sorted(str(path.relative_to(empty)) for path in empty.rglob("*"))

    # What the environment's other pytest plugins write in any pytest run (pytest-benchmark
    # makes `.benchmarks/`) is theirs, not the kit's.
    # An empty folder has no tests: pytest's status 5.
    others = left_by(["-m", "pytest", "-p", "no:cacheprovider", "-q"], "baseline", status=5)
    left = left_by(command, "cwd")
    ours = [path for path in left if path not in others]
    assert ours == [], f"{' '.join(command)} wrote into the working directory: {ours}"
