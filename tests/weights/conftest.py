"""Weights tests run on every backend that can run here: host always, Vulkan where a device exists
(required in CI through EXO_GPU_REQUIRE_VULKAN=1), as in tests/reliability."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.weights.synthetic import LlamaShape, write_llama

# Six layers in three shards: layers 0-1 with the embedding, 2-3, 4-5 with the norm and head.
SHAPE = LlamaShape(layers=6)


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
