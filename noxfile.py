"""The suite against the built wheels on every Python the package claims (3.10 to 3.13).

Each session installs dist/'s two wheels (`make wheels`) into a fresh virtualenv, copies the tests
out of the source tree (so `import exo_gpu_plugins` finds the installed wheel, not the checkout)
and runs them:
    nox -s tests    core tests + Vulkan smoke tests, per version
    nox -s quick    a few minutes' worth of the same, per version (what CI runs)
Interpreters come from pyenv when it has them (PYENV_ROOT, default ~/.pyenv), else from PATH.
"""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

import nox

ROOT = Path(__file__).parent
VERSIONS = ("3.10", "3.11", "3.12", "3.13")
TEST_DEPS = (
    "pytest>=7.4",
    "pytest-asyncio>=0.23",
    "hypothesis>=6.90",
    "numpy",
    "setuptools>=70.1",  # builds the fixture plugins without the `wheel` package
    "wheel",
    "hatchling",
)

CORE_TESTS = (
    "tests/test_models.py",
    "tests/test_registry.py",
    "tests/test_cli.py",
    "tests/test_lifecycle.py",
    "tests/test_telemetry.py",
    "tests/kit",
)
VULKAN_SMOKE = ("tests/vulkan/test_workflow.py", "tests/vulkan/test_properties.py")
QUICK_TESTS = ("tests/test_models.py", "tests/test_registry.py", "tests/test_cli.py", *VULKAN_SMOKE)

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["quick"]


def _interpreter(version: str) -> str:
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"))
    return found[-1] if found else version


PYTHONS = [_interpreter(v) for v in VERSIONS]


def _wheels() -> list[str]:
    core = sorted(glob.glob(str(ROOT / "dist" / "exo_gpu_plugins-*.whl")))
    vulkan = sorted(glob.glob(str(ROOT / "dist" / "exo_gpu_vulkan-*manylinux*.whl")))
    if not core or not vulkan:
        raise FileNotFoundError("no wheels in dist/: run `make wheels` first")
    return [core[-1], vulkan[-1]]


def _run_suite(session: nox.Session, paths: tuple[str, ...]) -> None:
    session.install(*TEST_DEPS)
    wheels = _wheels()
    session.install(*wheels)
    # The version does not change between builds: reinstall, or a reused venv keeps stale wheels.
    session.install("--force-reinstall", "--no-deps", *wheels)
    work = Path(session.create_tmp()) / "tree"
    shutil.rmtree(work, ignore_errors=True)
    for part in ("tests", "examples", "scripts", "docs"):  # tests read the docs and scripts too
        shutil.copytree(ROOT / part, work / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", work / "pyproject.toml")
    session.chdir(work)
    session.run(
        "python", "-c",
        "import exo_gpu_plugins, exo_gpu_vulkan, sys; "
        "assert 'site-packages' in exo_gpu_plugins.__file__, exo_gpu_plugins.__file__; "
        "print(sys.version.split()[0], exo_gpu_plugins.__file__)",
    )  # fmt: skip
    env = {"EXO_GPU_REQUIRE_VULKAN": "1", "XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR", "/tmp")}
    session.run(
        "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths, *session.posargs, env=env
    )


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Core tests and the Vulkan smoke tests against the installed wheels."""
    _run_suite(session, (*CORE_TESTS, *VULKAN_SMOKE))


@nox.session(python=PYTHONS)
def quick(session: nox.Session) -> None:
    """The quick part: models, registry, CLI and the Vulkan workflow."""
    _run_suite(session, QUICK_TESTS)
