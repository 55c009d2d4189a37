"""Fixtures shared by the suite: fixture plugin distributions, pip-installed into a private target,
and a helper that runs Python in a fresh process (the way exo starts). The per-backend fixtures
(`factory`, `backend`) come from tests/backends.py, registered here as a plugin.

Tests that await are `async def test_...`, run by pytest-asyncio (asyncio_mode = "auto"), each on
a fresh event loop; async fixtures share the test's loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["tests.backends"]

FIXTURE_PLUGINS = Path(__file__).parent / "fixture_plugins"

# An empty exo config (no [gpu] table) for fresh processes, whatever the user's says. A regular
# file: /dev/null is refused since the configuration became strict (not a regular file).
EMPTY_CONFIG = str(Path(tempfile.mkdtemp(prefix="exo-gpu-tests-")) / "config.toml")
Path(EMPTY_CONFIG).write_text("")


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site directory holding the fixture plugins, built and installed by pip."""
    target = tmp_path_factory.mktemp("plugin-site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(target),
            *(str(p) for p in sorted(FIXTURE_PLUGINS.iterdir()) if p.is_dir()),
        ],
        check=True,
    )
    return target


def run_fresh(
    code: str, *, site: Path | None = None, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run `code` in a new interpreter with `site` on its path; the last stdout line is JSON."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EXO_")}
    environ["EXO_CONFIG_FILE"] = EMPTY_CONFIG
    if site is not None:
        # Only the fixture plugins: other installed plugins (vulkan, the example) must not change
        # results.
        environ["EXO_GPU_LOAD_PLUGINS"] = "good,badimport,badhook,duplicate"
        environ["PYTHONPATH"] = os.pathsep.join([str(site), environ.get("PYTHONPATH", "")])
    environ.update(env or {})
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def last_json(result: subprocess.CompletedProcess[str]) -> object:
    return json.loads(result.stdout.strip().splitlines()[-1])
