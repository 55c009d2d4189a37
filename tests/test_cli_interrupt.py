"""Ctrl-C ends a long `exo-gpu` command within a second, with status 130. The load reads from a
disk made slow on purpose (each 64 MiB read waits 2 s, as on a network file system): the loader
lets a running copy finish before freeing its memory, which here would take seconds."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SLOW_CLI = """
import sys, time
from exo_gpu_plugins import file_copy
real = file_copy.read_exact
def slow(*args):
    print("reading", file=sys.stderr, flush=True)
    time.sleep(2.0)
    real(*args)
file_copy.read_exact = slow
from exo_gpu_plugins.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def wait_for_line(process: subprocess.Popen[str], text: str, timeout: float) -> None:
    assert process.stderr is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(deadline - time.monotonic()):
            line = process.stderr.readline()
            if text in line:
                return
            if not line:
                break
    process.kill()
    pytest.fail(f"the command never printed {text!r}")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_ctrl_c_ends_a_load_within_a_second(tmp_path: Path) -> None:
    # 512 MiB that the file system stores as a hole: nothing is written to disk.
    sparse = tmp_path / "big.safetensors"
    header = b'{"model.layers.0.w":{"dtype":"U8","shape":[536870912],"data_offsets":[0,536870912]}}'
    header += b" " * (-len(header) % 8)
    with open(sparse, "wb") as handle:
        handle.write(len(header).to_bytes(8, "little") + header)
        handle.truncate(8 + len(header) + (512 << 20))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXO_")}
    env["EXO_CONFIG_FILE"] = str(tmp_path / "absent.toml")
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, "load", str(sparse), "--device", "host:0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        wait_for_line(process, "reading", timeout=60)
        time.sleep(0.2)
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        status = process.wait(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert status == 130
    assert elapsed < 1.0, f"took {elapsed:.2f} s after Ctrl-C"
