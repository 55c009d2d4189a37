"""Every path the package opens is refused at once, by name, when it is not a regular file: a FIFO
(whose `open` would wait for a writer forever), a socket, a character or block device, a folder;
and a symbolic link loop is reported as one. Each place a path is opened is tried with each kind:
a checkpoint file, a shard named by an index, the index itself (named, or found in a folder), a
`*.safetensors` entry of a folder, a file replaced after planning (the load's own open), `verify`,
`copy_file_to_device` on every backend, and exo's config file.

Each call runs in a thread with a deadline, so a call that blocks fails the test instead of hanging
the suite; the FIFOs are then opened for writing, which releases the blocked reader."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.config import requested_backend
from exo_gpu_plugins.errors import CheckpointError, ConfigError, FileReadError, GPUError
from exo_gpu_plugins.host.backend import HostBackend
from exo_gpu_plugins.weights import load_plan, load_weights, plan_checkpoint
from exo_gpu_plugins.weights.synthetic import write_safetensors

T = "model.layers.0.mlp.weight"
DEADLINE = 5.0  # seconds a refusal may take before the call counts as blocked (it takes ~1 ms)


def _block_device() -> str | None:
    for name in sorted(os.listdir("/dev")):
        path = os.path.join("/dev", name)
        with contextlib.suppress(OSError):
            if stat.S_ISBLK(os.stat(path).st_mode) and os.access(path, os.R_OK):
                return path
    return None


class Specials:
    """Makes special files at given paths; closes sockets and releases blocked FIFO readers."""

    def __init__(self) -> None:
        self.fifos: list[Path] = []
        self.sockets: list[socket.socket] = []
        self.short = Path(tempfile.mkdtemp(prefix="exo-sock-"))  # AF_UNIX paths are short

    def make(self, kind: str, path: Path) -> Path:
        if kind == "fifo":
            os.mkfifo(path)
            self.fifos.append(path)
        elif kind == "socket":
            target = self.short / f"s{len(self.sockets)}"
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(str(target))
            server.listen(1)
            self.sockets.append(server)
            path.symlink_to(target)
        elif kind == "char device":
            path.symlink_to(os.devnull)
        elif kind == "block device":
            device = _block_device()
            if device is None:
                pytest.skip("no readable block device in /dev here")
            path.symlink_to(device)
        elif kind == "folder":
            path.mkdir()
        else:  # pragma: no cover - a misspelt parameter
            raise AssertionError(kind)
        return path

    def release(self) -> None:
        for fifo in self.fifos:
            with contextlib.suppress(OSError):  # ENXIO: no reader is waiting
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    def close(self) -> None:
        self.release()
        for server in self.sockets:
            server.close()
        for entry in self.short.iterdir():
            entry.unlink()
        self.short.rmdir()


@pytest.fixture
def specials() -> Iterator[Specials]:
    made = Specials()
    yield made
    made.close()


KINDS = ["fifo", "socket", "char device", "block device", "folder"]
WORDS = {
    "fifo": "FIFO",
    "socket": "socket",
    "char device": "character device",
    "block device": "block device",
    "folder": "folder",
}


def refused(call: Callable[[], object], specials: Specials) -> BaseException:
    """The exception `call` raises, which it must raise within the deadline (not block)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test
            outcome.append(exc)
        else:
            outcome.append(None)

    worker = threading.Thread(target=run, daemon=True)
    started = time.perf_counter()
    worker.start()
    worker.join(DEADLINE)
    if worker.is_alive():
        specials.release()
        worker.join(DEADLINE)
        pytest.fail(f"blocked for {DEADLINE} s instead of refusing the path")
    assert outcome and outcome[0] is not None, "accepted a special file"
    assert time.perf_counter() - started < DEADLINE
    return outcome[0]


def expect(
    error: type[GPUError], call: Callable[[], object], specials: Specials, path: Path, kind: str
) -> None:
    exc = refused(call, specials)
    assert isinstance(exc, error), f"{type(exc).__name__}: {exc}"
    assert str(path) in str(exc)
    assert "not a regular file" in str(exc) and WORDS[kind] in str(exc), str(exc)


def good_file(path: Path) -> Path:
    write_safetensors(path, [(T, "U8", (64,))])
    return path


def index(folder: Path, shard: str) -> Path:
    path = folder / "model.safetensors.index.json"
    path.write_text(json.dumps({"weight_map": {T: shard}}))
    return path


# --------------------------------------------------------------------------------------------------
# Checkpoints


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_file(kind: str, tmp_path: Path, specials: Specials) -> None:
    path = specials.make(kind, tmp_path / "model.safetensors")
    if kind == "folder":  # a folder is a checkpoint folder: with nothing in it, it says so
        with pytest.raises(CheckpointError, match="holds no"):
            plan_checkpoint(path)
        return
    expect(CheckpointError, lambda: plan_checkpoint(path), specials, path, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_shard_named_by_an_index(kind: str, tmp_path: Path, specials: Specials) -> None:
    shard = specials.make(kind, tmp_path / "model-00001-of-00001.safetensors")
    named = index(tmp_path, shard.name)
    expect(CheckpointError, lambda: plan_checkpoint(named), specials, shard, kind)
    expect(CheckpointError, lambda: plan_checkpoint(tmp_path), specials, shard, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_the_index_itself(kind: str, tmp_path: Path, specials: Specials) -> None:
    good_file(tmp_path / "model-00001-of-00001.safetensors")
    path = specials.make(kind, tmp_path / "model.safetensors.index.json")
    if kind != "folder":  # named itself, a folder is a checkpoint folder (an empty one here)
        expect(CheckpointError, lambda: plan_checkpoint(path), specials, path, kind)
    # Found in its folder, it is still read (and refused), never skipped for the loose files.
    expect(CheckpointError, lambda: plan_checkpoint(tmp_path), specials, path, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_entry_of_a_folder(kind: str, tmp_path: Path, specials: Specials) -> None:
    good_file(tmp_path / "a.safetensors")
    path = specials.make(kind, tmp_path / "b.safetensors")
    # Skipping it would load part of the checkpoint and say nothing.
    expect(CheckpointError, lambda: plan_checkpoint(tmp_path), specials, path, kind)


@pytest.mark.parametrize("kind", ["fifo", "socket", "char device", "folder"])
def test_file_replaced_after_planning(
    kind: str,
    tmp_path: Path,
    specials: Specials,
    backend: GPUBackend[Any],
) -> None:
    path = good_file(tmp_path / "model.safetensors")
    plan = plan_checkpoint(path)
    path.unlink()
    specials.make(kind, path)
    device = backend.list_devices()[0].device_id
    # refused() runs this in a worker thread with a deadline: that thread needs a loop of its own.
    expect(
        CheckpointError,
        lambda: asyncio.run(load_plan(backend, device, plan)),
        specials,
        path,
        kind,
    )


def test_verify_of_a_file_replaced_by_a_fifo(
    tmp_path: Path,
    specials: Specials,
) -> None:
    path = good_file(tmp_path / "model.safetensors")
    host = HostBackend()

    async def load_then_replace_then_verify() -> None:
        async with host:
            loaded = await load_weights(host, "host:0", path)
            path.unlink()
            specials.make("fifo", path)
            try:
                await loaded.verify(host)
            finally:
                await loaded.free(host)

    # refused() runs this in a worker thread with a deadline: that thread needs a loop of its own.
    expect(FileReadError, lambda: asyncio.run(load_then_replace_then_verify()), specials, path, "fifo")


# --------------------------------------------------------------------------------------------------
# copy_file_to_device and the config file


@pytest.mark.parametrize("kind", KINDS)
async def test_copy_file_to_device(
    kind: str,
    tmp_path: Path,
    specials: Specials,
    backend: GPUBackend[Any],
) -> None:
    path = specials.make(kind, tmp_path / "source.bin")
    device = backend.list_devices()[0].device_id
    handle = await backend.allocate(device, 4096)
    for src in (path, str(path)):

        def copy(src: object = src) -> int:
            # refused() runs this in a worker thread, which needs a loop of its own.
            return asyncio.run(backend.copy_file_to_device(src, handle))

        expect(FileReadError, copy, specials, path, kind)
    await backend.deallocate(handle)


@pytest.mark.parametrize("kind", KINDS)
def test_config_file(kind: str, tmp_path: Path, specials: Specials) -> None:
    path = specials.make(kind, tmp_path / "config.toml")
    expect(
        ConfigError,
        lambda: requested_backend(env={"EXO_CONFIG_FILE": str(path)}),
        specials,
        path,
        kind,
    )


def test_missing_config_file_still_means_automatic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # ~/.config/exo/config.toml does not exist
    assert requested_backend(env={}).automatic
    # Named explicitly, a missing file is a mistake to report (configuration is strict).
    with pytest.raises(ConfigError, match="names no file"):
        requested_backend(env={"EXO_CONFIG_FILE": str(tmp_path / "absent.toml")})


# --------------------------------------------------------------------------------------------------
# Symbolic link loops


def loop_at(path: Path) -> Path:
    path.symlink_to(path.name)  # a link to itself
    return path


def test_symlink_loop_as_checkpoint(tmp_path: Path) -> None:
    path = loop_at(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as caught:
        plan_checkpoint(path)
    assert str(path) in str(caught.value)
    assert "symbolic link loop" in str(caught.value)
    assert "no such file" not in str(caught.value)


def test_symlink_loop_as_shard_is_not_a_missing_shard(tmp_path: Path) -> None:
    shard = loop_at(tmp_path / "model-00001-of-00001.safetensors")
    named = index(tmp_path, shard.name)
    # A missing shard would be accepted here (exo downloads only its own shards) and refused
    # only if selected; a loop is an error either way.
    with pytest.raises(CheckpointError, match="symbolic link loop") as caught:
        plan_checkpoint(named, select=lambda name: False)
    assert str(shard) in str(caught.value)


async def test_symlink_loop_as_copy_source(
    tmp_path: Path,
    backend: GPUBackend[Any],
) -> None:
    path = loop_at(tmp_path / "source.bin")
    handle = await backend.allocate(backend.list_devices()[0].device_id, 64)
    with pytest.raises(FileReadError, match="symbolic links") as caught:
        await backend.copy_file_to_device(path, handle)
    assert str(path) in str(caught.value)
    await backend.deallocate(handle)


def test_symlink_loop_as_config_file(tmp_path: Path) -> None:
    path = loop_at(tmp_path / "config.toml")
    with pytest.raises(ConfigError, match="symbolic links") as caught:
        requested_backend(env={"EXO_CONFIG_FILE": str(path)})
    assert str(path) in str(caught.value)


# --------------------------------------------------------------------------------------------------
# The command line


def test_cli_load_of_a_fifo_exits_2_with_one_line(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXO_")}
    env["EXO_CONFIG_FILE"] = str(tmp_path / "absent.toml")
    started = time.perf_counter()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "exo_gpu_plugins.cli", "load", str(fifo), "--device", "host:0"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("exo-gpu load blocked on a FIFO")
    elapsed = time.perf_counter() - started
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(fifo) in lines[0] and "FIFO" in lines[0], result.stderr
    # The interpreter's start and imports included; the refusal itself takes about a millisecond.
    assert elapsed < 10, elapsed
