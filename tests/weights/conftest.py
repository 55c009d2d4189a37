"""Weights tests run on every backend that can run here: host always, Vulkan where a device exists
(required in CI through EXO_GPU_REQUIRE_VULKAN=1), as in tests/reliability."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.host.backend import HostBackend
from exo_gpu_plugins.weights.synthetic import LlamaShape, write_llama


def _vulkan_reason() -> str | None:
    try:
        from exo_gpu_vulkan.backend import probe
    except ImportError as exc:
        return f"exo-gpu-vulkan not installed ({exc})"
    return probe()


def _make_vulkan() -> GPUBackend[Any]:
    from exo_gpu_vulkan.backend import VulkanBackend

    return VulkanBackend()


FACTORIES: dict[str, Callable[[], GPUBackend[Any]]] = {"host": HostBackend, "vulkan": _make_vulkan}

# Six layers in three shards: layers 0-1 with the embedding, 2-3, 4-5 with the norm and head.
SHAPE = LlamaShape(layers=6)


@pytest.fixture(params=list(FACTORIES))
def factory(request: pytest.FixtureRequest) -> Callable[[], GPUBackend[Any]]:
    name = request.param
    if name == "vulkan":
        reason = _vulkan_reason()
        if reason is not None:
            if os.environ.get("EXO_GPU_REQUIRE_VULKAN") == "1":
                pytest.fail(f"Vulkan required but unavailable: {reason}")
            pytest.skip(reason)
    return FACTORIES[name]


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def backend(
    factory: Callable[[], GPUBackend[Any]], loop: asyncio.AbstractEventLoop
) -> Iterator[GPUBackend[Any]]:
    backend = factory()
    loop.run_until_complete(backend.initialize())
    yield backend
    loop.run_until_complete(backend.shutdown())


@pytest.fixture
def device(backend: GPUBackend[Any]) -> str:
    return backend.list_devices()[0].device_id


@pytest.fixture(scope="session")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The index of a 6-layer Llama-shaped checkpoint in three shards."""
    return write_llama(tmp_path_factory.mktemp("llama3"), SHAPE, shards=3)


@pytest.fixture(scope="session")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model in one file."""
    return write_llama(tmp_path_factory.mktemp("llama1"), SHAPE, shards=1)
