"""`exo-gpu` as a user runs it: tables, JSON, one-line errors with a non-zero exit, and each problem
of issue 14 (a person tripping over the CLI) as a test."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from exo_gpu_plugins.cli import main
from exo_gpu_plugins.sizes import exact_label, exact_tag, format_bytes, parse_size

from .conftest import EMPTY_CONFIG, last_json, run_fresh

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_PLUGIN = ROOT / "examples" / "minimal_plugin"


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as stdout/stderr are when a person runs the command."""

    def isatty(self) -> bool:
        return True


def run(*argv: str, out: io.StringIO | None = None, err: io.StringIO | None = None) -> tuple[int, str]:
    out = out if out is not None else io.StringIO()
    status = main(list(argv), out=out, err=err if err is not None else io.StringIO())
    return status, out.getvalue()


def cli(
    *argv: str, env: dict[str, str] | None = None, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """`exo-gpu ARGV` in a fresh process, with the environment a user has (plus `env`)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EXO_")}
    environ["EXO_CONFIG_FILE"] = EMPTY_CONFIG  # no [gpu] table, whatever the user's config says
    environ.update(env or {})
    streams = kwargs or {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    return subprocess.run(
        [sys.executable, "-m", "exo_gpu_plugins.cli", *argv],
        text=True,
        timeout=120,
        check=False,
        env=environ,
        **streams,  # type: ignore[call-overload]
    )


def vulkan_available() -> bool:
    from exo_gpu_plugins.registry import get_registry

    entry = get_registry().backends.get("vulkan")
    return entry is not None and entry.unavailable_reason() is None


# --------------------------------------------------------------------------------------------------
# What worked before and must keep working


def test_plugins_lists_host() -> None:
    status, text = run("plugins")
    assert status == 0 and "host" in text and "available" in text
    status, text = run("plugins", "--json")
    assert any(row["backend"] == "host" and row["available"] for row in json.loads(text))


def test_plugins_json_is_the_registry_report() -> None:
    from exo_gpu_plugins.registry import get_registry

    _, text = run("plugins", "--json")
    assert json.loads(text) == [asdict(row) for row in get_registry().report()]


def test_devices_table_and_json() -> None:
    status, text = run("devices", "--backend", "host")
    assert status == 0 and "host:0" in text and "GiB" in text
    status, text = run("devices", "--backend", "host", "--json")
    rows = json.loads(text)
    assert rows[0]["device_id"] == "host:0" and rows[0]["total_bytes"] > 0
    assert {"uuid", "memory_source", "default", "available_bytes"} <= set(rows[0])
    # Which devices can hand memory to torch or another process, without `info` for each.
    assert rows[0]["export_kinds"] == ["cpu", "fd"]
    header, _, row = text_table(run("devices", "--backend", "host")[1])
    assert header[-1] == "exports" and row[-1] == "cpu, fd"


def text_table(text: str) -> tuple[list[str], str, list[str]]:
    """The header, rule and first row of a table `run` printed, split at runs of 2+ spaces."""
    header, rule, first = text.splitlines()[:3]
    return re.split(r"\s{2,}", header.strip()), rule, re.split(r"\s{2,}", first.strip())


def test_info_shows_every_section() -> None:
    status, text = run("info", "host:0", "--json")
    data = json.loads(text)
    assert status == 0 and set(data) == {"device", "memory", "machine", "capabilities", "telemetry"}
    assert {"temperature_c", "power_w", "clock_mhz"} <= set(data["telemetry"])
    assert all(value is None for value in data["telemetry"].values())  # host has no sensors


def test_info_shows_where_each_field_came_from_and_utilization() -> None:
    status, text = run("info", "host:0")
    assert status == 0
    header = next(line for line in text.splitlines() if line.startswith("field"))
    assert header.split() == ["field", "value", "source"]
    memory_line = next(line for line in text.splitlines() if line.startswith("memory_bytes"))
    assert memory_line.split()[-1].startswith("os")
    assert "utilization_percent" in text
    _, data = run("info", "host:0", "--json")
    assert dict(json.loads(data)["device"]["field_sources"])["memory_bytes"].startswith("os")


def test_monitor_reads_utilization() -> None:
    status, text = run("monitor", "host:0", "--count", "1", "--json")
    assert status == 0 and "utilization_percent" in json.loads(text)
    _, table = run("monitor", "host:0", "--count", "1")
    assert "util %" in table


def test_roundtrip_verifies_bytes() -> None:
    status, text = run("roundtrip", "--backend", "host", "--size", "1M", "--json")
    assert status == 0 and json.loads(text)["exact"] is True


@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "nope:0"], "unknown GPU backend 'nope'"),
        (["info", "host"], "not of the form"),
        (["info", "host:7"], "no device 'host:7'"),
        (["devices", "--backend", "cuda"], "unknown GPU backend 'cuda' (from --backend)"),
        (["roundtrip", "--backend", "vulkan", "--device", "host:0"], "not a device of backend"),
    ],
)
def test_errors_are_one_line_without_traceback(argv: list[str], message: str) -> None:
    result = cli(*argv)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_size_argument_is_refused() -> None:
    err = io.StringIO()
    status, _ = run("roundtrip", "--size", "lots", err=err)
    assert status == 2 and len(err.getvalue().splitlines()) == 1
    assert "argument --size: not a size: 'lots'" in err.getvalue()


def test_sizes() -> None:
    assert format_bytes(None) == "-" and format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(80 << 30) == "80.0 GiB"
    assert format_bytes(3 << 30) == "3.0 GiB"
    assert parse_size("4K") == 4096 and parse_size("1.5M") == 3 << 19 and parse_size("2GiB") == 2 << 30
    assert (
        exact_label(4096) == "4 KiB" and exact_tag(64 << 20) == "64MiB" and exact_label(1536) == "1536 B"
    )
    for bad in ("1.5", "0", "-4K", "lots", "1e3", "1.1K"):
        with pytest.raises(ValueError):
            parse_size(bad)


# --------------------------------------------------------------------------------------------------
# Issue 14, one test per problem


def test_device_implies_its_backend_for_roundtrip_and_bench() -> None:
    trip = cli("roundtrip", "--device", "host:0", "--size", "64K", "--json")
    assert trip.returncode == 0, trip.stderr
    assert json.loads(trip.stdout)["backend"] == "host"
    bench = cli(
        "bench", "--device", "host:0", "--sizes", "4K", "--d2d-size", "64K", "--repeats", "1",
        "--no-peers", "--json",
    )  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    assert json.loads(bench.stdout)["backend"].startswith("host (host:0")


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin installed into a throwaway folder (never into the suite's environment)."""
    if importlib.util.find_spec("hatchling") is None:  # the GPU machine's image has no hatchling
        pytest.skip("hatchling, the example plugin's build backend, is not installed")
    target = tmp_path_factory.mktemp("example-site")
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
            "--disable-pip-version-check", "--target", str(target), str(EXAMPLE_PLUGIN),
        ],
        check=True,
    )  # fmt: skip
    return target


def test_example_plugin_never_wins_automatic_selection(example_site: Path) -> None:
    code = (
        "import json; from exo_gpu_plugins import get_registry; r = get_registry(); "
        "print(json.dumps({'names': r.names(), 'chosen': r.select(), 'named': r.select('Example')}))"
    )
    result = run_fresh(code, site=example_site, env={"EXO_GPU_LOAD_PLUGINS": "example"})
    data = last_json(result)
    assert isinstance(data, dict)
    assert "example" in data["names"]  # installed, listed, usable by name ...
    assert data["named"] == "example"
    assert data["chosen"] == "host"  # ... but never chosen automatically over host


def test_make_test_installs_the_example_plugin_into_a_throwaway_target() -> None:
    script = (ROOT / "scripts" / "test.sh").read_text().replace("\\\n", " ")
    installs = [
        line for line in script.splitlines() if "pip install" in line and "minimal_plugin" in line
    ]
    assert installs and all("--target" in line for line in installs)


def test_bench_small_sizes_have_human_labels_and_distinct_keys() -> None:
    status, text = run(
        "bench", "--device", "host:0", "--sizes", "4K", "8K", "4K", "--d2d-size", "64K",
        "--repeats", "1", "--no-peers", "--json",
    )  # fmt: skip
    assert status == 0
    figures = json.loads(text)["figures"]
    keys = [f["key"] for f in figures]
    assert len(keys) == len(set(keys))
    assert {"h2d_4KiB", "h2d_8KiB", "d2h_into_4KiB", "d2h_bytes_8KiB"} <= set(keys)
    labels = {f["key"]: f["label"] for f in figures}
    assert labels["h2d_4KiB"] == "host -> device, 4 KiB" and labels["d2d"] == "device -> device, 64 KiB"
    assert all(f["ours"] is not None and f["ours"] > 0 for f in figures)


def test_closed_pipe_ends_quietly_with_status_zero() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written, as with `| head -0`
    try:
        result = cli("info", "host:0", stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert result.returncode == 0
    assert result.stderr == ""


@pytest.mark.parametrize("argv", [["roundtrip"], ["devices"]])
def test_bad_backend_from_environment_says_where_it_came_from(argv: list[str]) -> None:
    result = cli(*argv, env={"EXO_GPU_BACKEND": "nonsense"})
    assert result.returncode == 2
    assert "unknown GPU backend 'nonsense' (from EXO_GPU_BACKEND)" in result.stderr


def test_bad_backend_from_config_file_says_where_it_came_from(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[gpu]\nbackend = "nonsense"\n')
    result = cli("roundtrip", env={"EXO_CONFIG_FILE": str(config)})
    assert result.returncode == 2
    assert f"unknown GPU backend 'nonsense' (from config file {config})" in result.stderr


def test_unavailable_backend_of_a_device_id_is_not_blamed_on_an_argument(plugin_site: Path) -> None:
    result = cli(
        "info",
        "fixture:0",
        env={
            "PYTHONPATH": os.pathsep.join([str(plugin_site), os.environ.get("PYTHONPATH", "")]),
            "EXO_GPU_LOAD_PLUGINS": "good",
            "FIXTURE_UNAVAILABLE": "no card",
        },
    )
    assert result.returncode == 2
    assert "(from device id fixture:0) cannot run here: no card" in result.stderr
    assert "argument" not in result.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_before_or_after_the_command_keeps_the_exit_status(where: str) -> None:
    argv = ["--debug", "info", "nope:0"] if where == "before" else ["info", "nope:0", "--debug"]
    result = cli(*argv)
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("exo-gpu: error: unknown GPU backend")


def test_backend_names_are_case_insensitive_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("devices", "--backend", "Host")[0] == 0
    assert run("roundtrip", "--backend", "HOST", "--size", "4K")[0] == 0
    assert run("roundtrip", "--device", "Host:0", "--size", "4K")[0] == 0
    assert run("info", "HOST:0", "--json")[0] == 0
    assert run("monitor", "Host:0", "--count", "1", "--json")[0] == 0
    from exo_gpu_plugins.registry import get_registry
    from exo_gpu_plugins.testing import check

    assert get_registry().entry("HoSt").name == "host"  # what the kit resolves its name with
    asked: list[str] = []
    passed = check.CheckReport("host", 0, check.KitResult("host", [], {}, 0, 0.0))
    monkeypatch.setattr(check, "run_check", lambda backend, **_: asked.append(backend) or passed)
    assert run("check", "Host", "--examples", "1")[0] == 0 and asked == ["host"]


def test_version() -> None:
    from exo_gpu_plugins import __version__

    result = cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"exo-gpu {__version__}"


@pytest.mark.parametrize(
    "argv",
    [
        ["monitor", "--count", "0"],
        ["monitor", "--interval", "0"],
        ["roundtrip", "--size", "1.5"],
        ["roundtrip", "--size", "0"],
        ["check", "host", "--examples", "-1"],
        ["bench", "--repeats", "0"],
    ],
)
def test_arguments_that_would_do_nothing_are_refused(argv: list[str]) -> None:
    result = cli(*argv)
    assert result.returncode == 2
    assert "error: argument" in result.stderr


def test_misspelt_config_key_is_an_error_naming_the_known_keys(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[gpu]\nbackned = "host"\n')
    result = cli("roundtrip", "--size", "4K", env={"EXO_CONFIG_FILE": str(config)})
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "unknown key gpu.backned" in result.stderr and "known keys: backend" in result.stderr


def test_allow_list_naming_nothing_installed_is_an_error() -> None:
    result = cli("plugins", env={"EXO_GPU_LOAD_PLUGINS": "vulcan"})
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "EXO_GPU_LOAD_PLUGINS='vulcan' names vulcan, which no installed plugin has" in result.stderr


@pytest.mark.skipif(not vulkan_available(), reason="no Vulkan device")
def test_out_of_memory_names_a_human_size_and_the_device_id() -> None:
    result = cli("roundtrip", "--device", "vulkan:0", "--size", "1T")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "1.0 TiB" in line and "vulkan:0" in line
    assert "1099511627776" not in line and "device 0" not in line


def test_long_round_trip_shows_progress_with_rate_on_a_terminal() -> None:
    err = Terminal()
    status, text = run("roundtrip", "--device", "host:0", "--size", "192M", out=io.StringIO(), err=err)
    assert status == 0 and "bytes identical" in text
    drawn = err.getvalue()
    assert "round trip on host:0" in drawn and "/s" in drawn and "MiB" in drawn


def test_piped_progress_writes_nothing() -> None:
    err = io.StringIO()
    status, _ = run("roundtrip", "--device", "host:0", "--size", "192M", err=err)
    assert status == 0 and err.getvalue() == ""


def test_devices_fits_an_80_column_terminal() -> None:
    # Piped, names are printed whole (issue 24); on a terminal the table fits its width.
    status, drawn = run("devices", out=Terminal())
    text = re.sub(r"\x1b\[[0-9;]*m", "", drawn)
    assert status == 0 and "host:0" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_piped_output_is_plain_and_a_terminal_gets_colour() -> None:
    _, piped = run("devices", "--backend", "host")
    assert "\x1b" not in piped and not any(line != line.rstrip() for line in piped.splitlines())
    _, drawn = run("devices", "--backend", "host", out=Terminal())
    assert "\x1b[" in drawn


def test_monitor_on_a_terminal_is_a_live_view() -> None:
    status, drawn = run("monitor", "host:0", "--count", "2", "--interval", "0.05", out=Terminal())
    assert status == 0 and "host:0" in drawn and "Ctrl-C to stop" in drawn
    status, piped = run("monitor", "host:0", "--count", "2", "--interval", "0.05")
    assert status == 0 and piped.count("host:0") == 2 and "Ctrl-C" not in piped


def test_import_and_discovery_do_not_load_the_cli_renderer() -> None:
    code = (
        "import json, sys; import exo_gpu_plugins; exo_gpu_plugins.get_registry(); "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'rich' "
        "or m.startswith('exo_gpu_plugins.cli'))))"
    )
    assert last_json(run_fresh(code)) == []
