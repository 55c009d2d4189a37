"""`exo-gpu info` says how memory can leave each device (its export kinds)."""

from __future__ import annotations

import io
import json

from exo_gpu_plugins.cli import main


def test_info_shows_the_export_kinds() -> None:
    out = io.StringIO()
    assert main(["info", "host:0", "--json"], out=out, err=io.StringIO()) == 0
    assert json.loads(out.getvalue())["capabilities"]["export_kinds"] == ["cpu", "fd"]
    out = io.StringIO()
    assert main(["info", "host:0"], out=out, err=io.StringIO()) == 0
    assert any(
        line.split()[:3] == ["export_kinds", "cpu,", "fd"] for line in out.getvalue().splitlines()
    ), out.getvalue()
