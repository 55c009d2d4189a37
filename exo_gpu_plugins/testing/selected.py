"""The kit bound to the backend chosen on the command line (`--exo-gpu-backend`) or by `run_kit`.

The pytest plugin adds this file to the paths pytest collects when `--exo-gpu-backend NAME` is
given, and `exo-gpu check` runs it in-process; the backend factory arrives through the pytest
config's stash, so the same test class serves every backend without generating code.
"""

from __future__ import annotations

import pytest

from exo_gpu_plugins.testing.contract import BackendContract, BackendFactory
from exo_gpu_plugins.testing.pytest_plugin import FACTORY_KEY

__all__ = ["TestSelectedBackend"]


class TestSelectedBackend(BackendContract):
    """The whole contract, for the backend named with `--exo-gpu-backend` (skipped without one)."""

    @pytest.fixture
    def backend_factory(self, request: pytest.FixtureRequest) -> BackendFactory:
        """The factory the plugin or `run_kit` put in the stash."""
        factory = request.config.stash.get(FACTORY_KEY, None)
        if factory is None:
            pytest.skip("no backend selected: pass --exo-gpu-backend NAME")
        return factory
