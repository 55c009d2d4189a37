"""The kit against the reference host backend: every test must pass (or skip by capability)."""

from __future__ import annotations

from exo_gpu_plugins.host.backend import HostBackend
from exo_gpu_plugins.testing import BackendContract


class TestHostBackend(BackendContract):
    backend_class = HostBackend
