"""The kit's pytest plugin: command-line options, expected failures, and `--exo-gpu-backend`.

Installing exo-gpu-plugins registers this module as a `pytest11` plugin, so it is loaded by every
pytest run in the environment, including runs of projects that have nothing to do with GPUs. It
therefore does nothing unless asked: it only declares its options, imports neither the kit nor
Hypothesis, and its collection hook returns at once unless the kit's test classes were imported by
some test module. `-p exo_gpu_plugins.testing.pytest_plugin` loads it where autoloading is off.

What it adds when opted in:
- `--exo-gpu-backend NAME`: run the whole kit against the installed backend NAME (the kit's module
  `exo_gpu_plugins.testing.selected` is added to the paths to collect);
- `--exo-gpu-device ID`: the device those tests use (default: the first listed);
- `--exo-gpu-xfail FILE`: an expected-failures file applied to every kit test;
- `--exo-gpu-examples N` / `--exo-gpu-steps N`: the state machine's size (defaults 200 and 25,
  or `EXO_GPU_KIT_EXAMPLES` / `EXO_GPU_KIT_STEPS`);
- expected failures from a kit class's `expected_failures_file`, and a warning for entries that
  match no collected test.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from exo_gpu_plugins.testing import expected_failures

if TYPE_CHECKING:
    from exo_gpu_plugins.backend import GPUBackend

__all__ = [
    "ACTIVE_KEY",
    "DEVICE_KEY",
    "FACTORY_KEY",
    "NO_DATABASE_KEY",
    "SELECTED_MODULE",
    "name_mismatch",
    "xfail_applied_at_collection",
]

#: Set by this plugin's `pytest_configure`; the kit falls back to doing its own xfail marking without.
ACTIVE_KEY = pytest.StashKey[bool]()
#: The factory `exo_gpu_plugins.testing.selected` tests, from `--exo-gpu-backend` or `run_kit`.
FACTORY_KEY = pytest.StashKey["Callable[[], GPUBackend[Any]]"]()
#: The device id chosen with `--exo-gpu-device`.
DEVICE_KEY = pytest.StashKey[str]()
#: Set by `run_kit` and `--exo-gpu-backend`: the kit writes nothing into the working directory (no
#: Hypothesis database, Hypothesis' other storage in a temporary directory).
NO_DATABASE_KEY = pytest.StashKey[bool]()

SELECTED_MODULE = Path(__file__).with_name("selected.py")
_CONTRACT_MODULE = "exo_gpu_plugins.testing.contract"
_XFAIL_DONE_KEY = pytest.StashKey[bool]()
_ENTRY_POINT_NAME = "exo_gpu_plugins"  # the pytest11 entry point in exo-gpu-plugins' metadata


def pytest_plugin_registered(
    plugin: object, plugin_name: str, manager: pytest.PytestPluginManager
) -> None:
    """Loaded with `-p exo_gpu_plugins.testing.pytest_plugin`: keep autoload from adding it again.

    pytest registers `-p` modules under their module name before it autoloads entry points; the
    entry point then loads this same module under the name `exo_gpu_plugins`, and pluggy refuses
    one module under two names. Blocking the entry point's name makes the two ways coexist.
    """
    if (
        plugin is sys.modules[__name__]
        and plugin_name != _ENTRY_POINT_NAME
        and manager.get_plugin(_ENTRY_POINT_NAME) is None
    ):
        manager.set_blocked(_ENTRY_POINT_NAME)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declare the options; nothing else happens until one is used or a kit class is collected."""
    group = parser.getgroup("exo-gpu", "exo-gpu-plugins conformance kit")
    group.addoption(
        "--exo-gpu-backend",
        metavar="NAME",
        default=None,
        help="run the conformance kit against the installed backend NAME",
    )
    group.addoption(
        "--exo-gpu-device",
        metavar="ID",
        default=None,
        help="device id the --exo-gpu-backend kit uses (default: the first listed device)",
    )
    group.addoption(
        "--exo-gpu-xfail",
        metavar="FILE",
        default=None,
        help="expected-failures file ('test_id  # reason' per line) for the kit's tests",
    )
    group.addoption(
        "--exo-gpu-examples",
        metavar="N",
        type=int,
        default=None,
        help="Hypothesis examples for the kit's state machine (default 200, env EXO_GPU_KIT_EXAMPLES)",
    )
    group.addoption(
        "--exo-gpu-steps",
        metavar="N",
        type=int,
        default=None,
        help="steps per state-machine example (default 25, env EXO_GPU_KIT_STEPS)",
    )


def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    """With `--exo-gpu-backend`, collect the kit's own module (pytest parses `args` after this),
    and turn pytest's cache off as `-p no:cacheprovider` does: a check run from any directory
    leaves nothing there (no `.pytest_cache/`)."""
    if getattr(early_config.known_args_namespace, "exo_gpu_backend", None):
        args.append(str(SELECTED_MODULE))
        early_config.pluginmanager.consider_pluginarg("no:cacheprovider")


def pytest_configure(config: pytest.Config) -> None:
    """Resolve `--exo-gpu-backend` now, so a wrong name is one usage error, not 100 failures."""
    config.stash[ACTIVE_KEY] = True
    name = config.getoption("exo_gpu_backend", None)
    if name:
        config.stash[FACTORY_KEY] = _load_backend_class(str(name))
        config.stash[NO_DATABASE_KEY] = True
    device = config.getoption("exo_gpu_device", None)
    if device:
        config.stash[DEVICE_KEY] = str(device)


def _load_backend_class(name: str) -> Callable[[], GPUBackend[Any]]:
    from exo_gpu_plugins.registry import get_registry

    try:
        backend_class = get_registry().entry(name).load_class()
    except Exception as exc:
        raise pytest.UsageError(
            f"--exo-gpu-backend {name}: cannot load the backend: {type(exc).__name__}: {exc}"
        ) from exc
    mismatch = name_mismatch(name, backend_class)
    if mismatch is not None:
        warnings.warn(pytest.PytestWarning(mismatch), stacklevel=2)
    return backend_class


def name_mismatch(name: str, backend: object) -> str | None:
    """A warning when the registry's backend `name` is a class with another `name`: callers who
    open `name` would find devices called something else (device ids come from the class)."""
    own = getattr(backend, "name", None)
    if not isinstance(backend, type) or own == name:
        return None
    cls = backend.__qualname__
    return (
        f"the registry's backend {name!r} is {cls}, whose name is {own!r}: its devices are "
        f"'{own}:<index>'; set {cls}.name = {name!r} (BackendInfo.name and the class's name "
        "should agree)"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Mark listed kit tests xfail(strict) and warn about entries naming no test.

    Runs first, before `-k`/`-m` deselect anything, so an entry for a deselected test is not
    reported as stale.
    """
    contract = sys.modules.get(_CONTRACT_MODULE)
    if contract is None:  # no test module imported the kit: not opted in
        return
    kit_items = [item for item in items if contract.is_kit_item(item)]
    if not kit_items:
        return
    config.stash[_XFAIL_DONE_KEY] = True
    for item in kit_items:
        item.user_properties.append(("exo_gpu_clause", contract.clause_of(item)))
    option_file = config.getoption("exo_gpu_xfail", None)
    if option_file:
        _apply(kit_items, _load(str(option_file)))
    by_class: dict[type[Any], list[pytest.Item]] = {}
    for item in kit_items:
        cls = getattr(item, "cls", None)
        if cls is not None and getattr(cls, "expected_failures_file", None):
            by_class.setdefault(cls, []).append(item)
    for cls, class_items in by_class.items():
        _apply(class_items, _load(str(cls.expected_failures_file)))


def xfail_applied_at_collection(config: pytest.Config) -> bool:
    """True when this plugin marked the kit's expected failures during collection."""
    return config.stash.get(_XFAIL_DONE_KEY, False)


def _load(path: str) -> list[expected_failures.ExpectedFailure]:
    try:
        return expected_failures.load_expected_failures(path)
    except OSError as exc:
        raise pytest.UsageError(f"cannot read expected-failures file {path}: {exc}") from exc


def _apply(items: list[pytest.Item], entries: list[expected_failures.ExpectedFailure]) -> None:
    by_id = {item.nodeid: item for item in items}
    matched, unmatched = expected_failures.match_expected_failures(
        entries, ((item.nodeid, _ids(item)) for item in items)
    )
    for nodeid, entry in matched.items():
        by_id[nodeid].add_marker(pytest.mark.xfail(strict=True, reason=entry.reason))
    if unmatched:
        listed = ", ".join(f"{e.test_id} ({e.source}:{e.line})" for e in unmatched)
        warnings.warn(
            pytest.PytestWarning(f"expected-failures entries match no collected test: {listed}"),
            stacklevel=2,
        )


def _ids(item: pytest.Item) -> set[str]:
    return expected_failures.candidate_ids(
        item.nodeid, item.name, getattr(item, "originalname", item.name)
    )
