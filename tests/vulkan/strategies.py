"""The transfer strategies a Vulkan test runs under: all three, or only the one
EXO_VULKAN_TRANSFER names (scripts/test.sh runs tests/vulkan once per strategy), and a backend
opened with one of them (skipped where this device cannot use it)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from exo_gpu_plugins.errors import BackendUnavailableError

ALL_STRATEGIES = ("mapped", "staging", "import")
_FORCED = os.environ.get("EXO_VULKAN_TRANSFER", "").strip().lower()
STRATEGIES = (_FORCED,) if _FORCED in ALL_STRATEGIES else ALL_STRATEGIES


async def open_with(strategy: str) -> Any:
    from exo_gpu_vulkan.backend import VulkanBackend

    backend = VulkanBackend(strategy=strategy)
    try:
        await backend.initialize()
    except BackendUnavailableError as exc:
        pytest.skip(f"strategy {strategy} unavailable here: {exc}")
    return backend
