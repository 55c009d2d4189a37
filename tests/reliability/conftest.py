"""Reliability tests run against every backend that can run here: host always, Vulkan where a
device exists (required in CI through EXO_GPU_REQUIRE_VULKAN=1): the `backend` and `factory`
fixtures of tests/backends.py."""

from __future__ import annotations

import os

SCALE = int(os.environ.get("EXO_GPU_RELIABILITY_SCALE", "1"))
