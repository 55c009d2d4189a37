"""`exo-gpu` as a user runs it: tables, JSON, one-line errors with a non-zero exit."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from exo_gpu_plugins.cli import format_bytes, main


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    status = main(list(argv), out=out)
    return status, out.getvalue()


def test_plugins_lists_host() -> None:
    status, text = run("plugins")
    assert status == 0 and "host" in text and "available" in text
    status, text = run("plugins", "--json")
    assert any(row["backend"] == "host" and row["available"] for row in json.loads(text))


def test_devices_table_and_json() -> None:
    status, text = run("devices", "--backend", "host")
    assert status == 0 and "host:0" in text and "GiB" in text
    status, text = run("devices", "--backend", "host", "--json")
    rows = json.loads(text)
    assert rows[0]["device_id"] == "host:0" and rows[0]["total_bytes"] > 0


def test_info_shows_every_section() -> None:
    status, text = run("info", "host:0", "--json")
    data = json.loads(text)
    assert status == 0 and set(data) == {"device", "memory", "capabilities", "telemetry"}
    assert data["telemetry"] == {"temperature_c": None, "power_w": None, "clock_mhz": None}


def test_roundtrip_verifies_bytes() -> None:
    status, text = run("roundtrip", "--backend", "host", "--size", "1M", "--json")
    assert status == 0 and json.loads(text)["exact"] is True


@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "nope:0"], "unknown GPU backend 'nope'"),
        (["info", "host"], "not of the form"),
        (["info", "host:7"], "no device 'host:7'"),
        (["devices", "--backend", "cuda"], "unknown GPU backend 'cuda'"),
    ],
)
def test_errors_are_one_line_without_traceback(argv: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exo_gpu_plugins.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_size_argument_is_refused() -> None:
    with pytest.raises(SystemExit) as exit_info:
        run("roundtrip", "--size", "lots")
    assert exit_info.value.code == 2


def test_format_bytes() -> None:
    assert format_bytes(None) == "-" and format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(80 << 30) == "80.0 GiB"
