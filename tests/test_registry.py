"""Plugin discovery through entry points, failure isolation, strict mode, allow/block lists and
backend selection, each in a fresh interpreter with pip-installed fixture plugins."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import last_json, run_fresh

DISCOVER = """
import json, sys
from exo_gpu_plugins import get_registry
registry = get_registry()
print(json.dumps({
    "plugins": {p.name: {"status": p.status, "dist": p.distribution, "version": p.version,
                         "backends": list(p.backends), "error": p.error} for p in registry.plugins},
    "backends": registry.names(),
    "imported_backend_module": "fixture_good.backend" in sys.modules,
}))
"""


def test_separately_built_plugin_is_discovered(plugin_site: Path) -> None:
    data = last_json(
        run_fresh(DISCOVER, site=plugin_site, env={"EXO_GPU_DISABLED_PLUGINS": "duplicate"})
    )
    assert isinstance(data, dict)
    good = data["plugins"]["good"]
    assert good == {
        "status": "loaded",
        "dist": "exo-gpu-fixture-good",
        "version": "1.2.3",
        "backends": ["fixture"],
        "error": None,
    }
    assert data["backends"] == ["fixture", "host"]  # priority order, host last
    assert data["imported_backend_module"] is False  # discovery imports no backend code


def test_broken_plugins_are_reported_and_the_rest_load(plugin_site: Path) -> None:
    result = run_fresh(DISCOVER, site=plugin_site)
    data = last_json(result)
    assert isinstance(data, dict)
    plugins = data["plugins"]
    assert plugins["badimport"]["status"] == "failed"
    assert "native library is missing" in plugins["badimport"]["error"]
    assert plugins["badimport"]["dist"] == "exo-gpu-fixture-badimport"
    assert plugins["badhook"]["status"] == "failed"
    assert "the hook itself fails" in plugins["badhook"]["error"]
    # Both fixture distributions claim "fixture": one wins, the other fails naming both.
    statuses = {plugins["good"]["status"], plugins["duplicate"]["status"]}
    assert statuses == {"loaded", "failed"}
    loser = plugins["good"] if plugins["good"]["status"] == "failed" else plugins["duplicate"]
    assert "exo-gpu-fixture-good" in loser["error"] and "exo-gpu-fixture-duplicate" in loser["error"]
    assert "fixture" in data["backends"] and "host" in data["backends"]
    assert "failed to load" in result.stderr  # logged, not silent


def test_strict_mode_reraises(plugin_site: Path) -> None:
    result = run_fresh(DISCOVER, site=plugin_site, env={"EXO_GPU_STRICT_PLUGINS": "1"}, check=False)
    assert result.returncode != 0
    assert "PluginError" in result.stderr


def test_allow_list_and_block_list(plugin_site: Path) -> None:
    allowed = last_json(run_fresh(DISCOVER, site=plugin_site, env={"EXO_GPU_LOAD_PLUGINS": "good"}))
    assert isinstance(allowed, dict)
    assert allowed["plugins"]["good"]["status"] == "loaded"
    for other in ("badimport", "badhook", "duplicate"):
        assert allowed["plugins"][other]["status"] == "disabled"
    blocked = last_json(
        run_fresh(
            DISCOVER,
            site=plugin_site,
            env={"EXO_GPU_DISABLED_PLUGINS": "exo-gpu-fixture-good, badimport,badhook,duplicate"},
        )
    )
    assert isinstance(blocked, dict)
    assert blocked["backends"] == ["host"]
    assert blocked["plugins"]["host"]["status"] == "loaded"  # the built-in cannot be blocked


# Run by a fresh interpreter (subprocess), so asyncio.run: that process's one event loop.
SELECT = """
import asyncio, json, sys
import exo_gpu_plugins
async def main():
    name = sys.argv[1] if len(sys.argv) > 1 else None
    backend = await exo_gpu_plugins.open_backend()
    handle = await backend.allocate(backend.list_devices()[0].device_id, 64)
    await backend.copy_to_device(b"exo", handle, 3)
    data = await backend.copy_from_device(handle, 0, 8)
    print(json.dumps({"backend": backend.name, "open": backend.is_open, "bytes": data.hex()}))
    await backend.shutdown()
asyncio.run(main())
"""

QUIET = {"EXO_GPU_DISABLED_PLUGINS": "badimport,badhook,duplicate"}


def test_automatic_selection_prefers_priority(plugin_site: Path) -> None:
    data = last_json(run_fresh(SELECT, site=plugin_site, env=QUIET))
    assert data == {"backend": "fixture", "open": True, "bytes": "000000" + b"exo".hex() + "0000"}


def test_environment_variable_selects(plugin_site: Path) -> None:
    data = last_json(run_fresh(SELECT, site=plugin_site, env={**QUIET, "EXO_GPU_BACKEND": "host"}))
    assert isinstance(data, dict) and data["backend"] == "host"


def test_exo_startup_with_config_file(plugin_site: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[gpu]\nbackend = "host"\n')
    data = last_json(run_fresh(SELECT, site=plugin_site, env={**QUIET, "EXO_CONFIG_FILE": str(config)}))
    assert isinstance(data, dict) and data == {**data, "backend": "host", "open": True}


def test_environment_beats_config_and_argument_beats_environment(
    plugin_site: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[gpu]\nbackend = "fixture"\n')
    code = """
import json, exo_gpu_plugins
from exo_gpu_plugins.config import requested_backend
r = exo_gpu_plugins.get_registry()
print(json.dumps([r.select(), r.select("fixture"), requested_backend().source]))
"""
    data = last_json(
        run_fresh(
            code,
            site=plugin_site,
            env={**QUIET, "EXO_CONFIG_FILE": str(config), "EXO_GPU_BACKEND": "host"},
        )
    )
    assert data == ["host", "fixture", "EXO_GPU_BACKEND"]


def test_configured_backend_blocked_is_an_error_not_a_silent_fallback(
    plugin_site: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[gpu]\nbackend = "fixture"\n')
    result = run_fresh(
        SELECT,
        site=plugin_site,
        check=False,
        env={
            "EXO_GPU_DISABLED_PLUGINS": "good,badimport,badhook,duplicate",
            "EXO_CONFIG_FILE": str(config),
        },
    )
    assert result.returncode != 0
    assert "UnknownBackendError" in result.stderr
    assert "unknown GPU backend 'fixture'" in result.stderr and "host" in result.stderr
    assert "disabled plugins: " in result.stderr and ", good" in result.stderr


def test_automatic_falls_back_to_host_with_a_warning(plugin_site: Path) -> None:
    result = run_fresh(SELECT, site=plugin_site, env={**QUIET, "FIXTURE_UNAVAILABLE": "no card"})
    data = last_json(result)
    assert isinstance(data, dict) and data["backend"] == "host"
    assert result.stderr.count("falling back to host memory: fixture: no card") == 1


def test_unknown_name_lists_choices(plugin_site: Path) -> None:
    result = run_fresh(SELECT, site=plugin_site, check=False, env={**QUIET, "EXO_GPU_BACKEND": "cuda"})
    assert result.returncode != 0
    assert (
        "unknown GPU backend 'cuda' (from EXO_GPU_BACKEND); installed backends: fixture, host"
        in result.stderr
    )


def test_unavailable_explicit_backend_says_why(plugin_site: Path) -> None:
    result = run_fresh(
        SELECT,
        site=plugin_site,
        check=False,
        env={**QUIET, "EXO_GPU_BACKEND": "fixture", "FIXTURE_UNAVAILABLE": "no card"},
    )
    assert result.returncode != 0
    assert "BackendUnavailableError" in result.stderr and "no card" in result.stderr


@pytest.mark.parametrize("text", ["[gpu\nbackend=", "gpu = 3\n", '[gpu]\nbackend = ""\n'])
def test_broken_config_is_a_config_error(tmp_path: Path, text: str) -> None:
    from exo_gpu_plugins.config import requested_backend
    from exo_gpu_plugins.errors import ConfigError

    config = tmp_path / "config.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=str(config)):
        requested_backend(env={"EXO_CONFIG_FILE": str(config)})


def test_missing_default_config_means_automatic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from exo_gpu_plugins.config import requested_backend

    monkeypatch.setenv("HOME", str(tmp_path))
    selection = requested_backend(env={})
    assert selection.automatic and selection.source == "automatic"


def test_config_file_variable_naming_no_file_is_an_error(tmp_path: Path) -> None:
    from exo_gpu_plugins.config import requested_backend
    from exo_gpu_plugins.errors import ConfigError

    absent = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=f"EXO_CONFIG_FILE='{absent}' names no file"):
        requested_backend(env={"EXO_CONFIG_FILE": str(absent)})
