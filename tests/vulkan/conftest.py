"""Vulkan tests run on whatever Vulkan device is present (lavapipe in CI, the H100 on the GPU
machine). Without one they skip, unless EXO_GPU_REQUIRE_VULKAN=1 (set by scripts/test.sh), which
turns the skip into a failure so CI can never pass without having run them."""

from __future__ import annotations

import os

import pytest


def _unavailable() -> str | None:
    try:
        from exo_gpu_vulkan.backend import probe
    except ImportError as exc:
        return f"exo-gpu-vulkan is not installed: {exc}"
    return probe()


REASON = _unavailable()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if REASON is None:
        return
    if os.environ.get("EXO_GPU_REQUIRE_VULKAN") == "1":
        raise pytest.UsageError(f"EXO_GPU_REQUIRE_VULKAN=1 but Vulkan is unavailable: {REASON}")
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.skip(reason=f"no Vulkan device: {REASON}"))
