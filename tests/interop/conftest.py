"""Backends for the interop tests: host always, Vulkan where a device exists (required in CI by
EXO_GPU_REQUIRE_VULKAN=1). torch-based tests need torch (installed by `make test`); CUDA tests
need a CUDA device that imports the backend's memory, and fail instead of skipping when
EXO_GPU_REQUIRE_CUDA=1 (set on the GPU machine)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from exo_gpu_plugins.backend import GPUBackend
from tests.backends import FACTORIES, usable_factory


def make_backend(name: str) -> GPUBackend[Any]:
    return usable_factory(name)()


@pytest.fixture(params=list(FACTORIES))
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def backend(backend_name: str) -> AsyncIterator[GPUBackend[Any]]:
    opened = make_backend(backend_name)
    await opened.initialize()
    yield opened
    await opened.shutdown()


def device_of(backend: GPUBackend[Any]) -> str:
    return backend.list_devices()[0].device_id


def view_device(backend: GPUBackend[Any]) -> str:
    """Where this backend's views of loaded weights go: the CPU where every allocation is
    host-visible, else CUDA (exportable allocations); skip where neither is offered."""
    kinds = backend.capabilities(device_of(backend)).export_kinds
    if "cpu" in kinds:
        return "cpu"
    if "cuda" in kinds:
        return "cuda"
    pytest.skip(f"{device_of(backend)} exports neither to the CPU nor to CUDA ({kinds})")


def require_cpu_views(backend: GPUBackend[Any]) -> None:
    """Skip (by capability) where the CPU cannot view every allocation in place."""
    kinds = backend.capabilities(device_of(backend)).export_kinds
    if "cpu" not in kinds:
        pytest.skip(f"{device_of(backend)} has no 'cpu' export kind ({kinds}): test_cuda.py covers it")


def require_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        if os.environ.get("EXO_GPU_REQUIRE_VULKAN") == "1":
            pytest.fail(f"torch is required for the interop tests (make test installs it): {exc}")
        pytest.skip(f"torch is not installed: {exc}")
    return torch


@pytest.fixture
async def vulkan() -> AsyncIterator[GPUBackend[Any]]:
    """The Vulkan backend, where its device exports memory to CUDA (the GPU machine); else a
    skip, unless EXO_GPU_REQUIRE_CUDA=1, which makes that a failure."""
    backend = make_backend("vulkan")
    await backend.initialize()
    kinds = backend.capabilities(device_of(backend)).export_kinds
    if "cuda" not in kinds:
        from exo_gpu_plugins.interop.cuda import cuda_unavailable_reason

        reason = cuda_unavailable_reason() or f"{device_of(backend)} has no CUDA twin ({kinds})"
        await backend.shutdown()
        if os.environ.get("EXO_GPU_REQUIRE_CUDA") == "1":
            pytest.fail(f"EXO_GPU_REQUIRE_CUDA=1 but CUDA cannot import Vulkan memory: {reason}")
        pytest.skip(reason)
    yield backend
    await backend.shutdown()
