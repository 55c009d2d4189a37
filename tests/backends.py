"""Fixtures for tests that run against every backend that can run here: host always, Vulkan where
a device exists (required in CI through EXO_GPU_REQUIRE_VULKAN=1). tests/conftest.py registers
this module as a plugin (`pytest_plugins`), so every test can ask for `factory` and `backend`."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from exo_gpu_plugins.backend import GPUBackend
from exo_gpu_plugins.host.backend import HostBackend


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


def usable_factory(name: str) -> Callable[[], GPUBackend[Any]]:
    """The factory of backend `name`; the test skips where it cannot run here (fails instead for
    Vulkan when EXO_GPU_REQUIRE_VULKAN=1)."""
    if name == "vulkan":
        reason = _vulkan_reason()
        if reason is not None:
            if os.environ.get("EXO_GPU_REQUIRE_VULKAN") == "1":
                pytest.fail(f"Vulkan required but unavailable: {reason}")
            pytest.skip(reason)
    return FACTORIES[name]


@pytest.fixture(params=list(FACTORIES))
def factory(request: pytest.FixtureRequest) -> Callable[[], GPUBackend[Any]]:
    return usable_factory(request.param)


@pytest.fixture
async def backend(factory: Callable[[], GPUBackend[Any]]) -> AsyncIterator[GPUBackend[Any]]:
    backend = factory()
    await backend.initialize()
    yield backend
    await backend.shutdown()
