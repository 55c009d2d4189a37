"""`exo-gpu load`: safetensors files onto a device through the weights API, as a user runs it.

Skipped where `exo_gpu_plugins.weights` is not importable (it lands from its own branch)."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest

pytest.importorskip("exo_gpu_plugins.weights", reason="the weights package is not installed")

from exo_gpu_plugins.cli import main


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(*argv: str, err: io.StringIO | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), err if err is not None else io.StringIO()
    status = main(list(argv), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def write_safetensors(path: Path, tensors: dict[str, bytes]) -> None:
    """A safetensors file of U8 tensors, written by hand so the test depends on the format only."""
    header: dict[str, object] = {}
    offset = 0
    for name, data in tensors.items():
        header[name] = {
            "dtype": "U8",
            "shape": [len(data)],
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(tensors.values()))


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    write_safetensors(
        path,
        {
            "model.embed_tokens.weight": bytes(range(256)) * 16,
            "model.layers.0.mlp.weight": b"\x01\x02\x03" * 1000,
            "model.layers.1.mlp.weight": b"\xfe" * 5000,
            "lm_head.weight": b"\x7f" * 1234,
        },
    )
    return path


def test_load_json_summary(checkpoint: Path) -> None:
    status, out, _ = run("load", str(checkpoint), "--device", "host:0", "--json")
    assert status == 0
    summary = json.loads(out)
    assert summary["tensors"] == 4
    assert summary["bytes"] == 4096 + 3000 + 5000 + 1234
    assert summary["allocations"] >= 1 and summary["seconds"] > 0
    assert summary["device_id"] == "host:0" and summary["verified"] is None


def test_load_verify_reads_every_byte_back(checkpoint: Path) -> None:
    status, out, _ = run("load", str(checkpoint), "--device", "host:0", "--verify", "--json")
    assert status == 0 and json.loads(out)["verified"] is True
    status, text, _ = run("load", str(checkpoint), "--device", "host:0", "--verify")
    assert status == 0 and "4 tensors" in text and "GB/s" in text and "identical" in text


def test_load_layer_range(checkpoint: Path) -> None:
    status, out, _ = run("load", str(checkpoint), "--device", "host:0", "--layers", "1:2", "--json")
    assert status == 0
    summary = json.loads(out)
    assert 0 < summary["tensors"] < 4  # layer 0 is left out


def test_load_progress_on_a_terminal(checkpoint: Path) -> None:
    err = Terminal()
    status, _, drawn = run("load", str(checkpoint), "--device", "host:0", err=err)
    assert status == 0 and "loading onto host:0" in drawn and "/s" in drawn


@pytest.mark.parametrize(
    "content", [b"", b"\xff" * 8 + b"{}", b"\x10\x00\x00\x00\x00\x00\x00\x00not json"]
)
def test_bad_file_is_one_line_and_status_2(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    status, out, err = run("load", str(bad), "--device", "host:0")
    assert status == 2 and out == ""
    assert err.startswith("exo-gpu: error: ") and len(err.strip().splitlines()) == 1
    assert "bad.safetensors" in err


def test_missing_file_is_one_line_and_status_2(tmp_path: Path) -> None:
    status, _, err = run("load", str(tmp_path / "absent.safetensors"), "--device", "host:0")
    assert status == 2 and len(err.strip().splitlines()) == 1


def test_bad_layer_range_is_refused(checkpoint: Path) -> None:
    status, _, err = run("load", str(checkpoint), "--device", "host:0", "--layers", "3")
    assert status == 2 and "START:END" in err
