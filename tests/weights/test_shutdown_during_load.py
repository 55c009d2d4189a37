"""`shutdown()` during a load: the load fails with `BackendClosedError`, and its clean-up, whose
frees find the backend closed (shutdown freed every allocation itself), stays quiet: no
error-level log, no traceback."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.errors import BackendClosedError
from exo_gpu_plugins.weights import LoadProgress, load_weights
from exo_gpu_plugins.weights.synthetic import write_safetensors

TENSORS = 8


async def test_shutdown_mid_load_is_quiet(
    backend: GPUBackend[Any],
    device: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "model.safetensors"
    write_safetensors(path, [(f"model.layers.{i}.w", "U8", (1 << 16,)) for i in range(TENSORS)])
    shutdowns: list[asyncio.Task[None]] = []

    def progress(update: LoadProgress) -> None:
        if update.bytes_done and not shutdowns:  # after the first copy, with more to come
            shutdowns.append(asyncio.get_running_loop().create_task(backend.shutdown()))

    async def load() -> None:
        try:
            await load_weights(backend, device, path, pack="tensor", progress=progress)
        finally:
            await asyncio.gather(*shutdowns)

    caplog.set_level(logging.DEBUG, logger="exo_gpu_plugins")
    with pytest.raises(BackendClosedError):
        await load()
    assert shutdowns, "the load ended before the shutdown could start"
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not loud, [(r.levelname, r.getMessage()) for r in loud]
    assert any("freed by the backend's shutdown" in r.getMessage() for r in caplog.records), (
        "the load's clean-up never met the closed backend: the test did not test it"
    )
