"""The whole conformance kit against ExampleBackend: one class, one attribute."""

from __future__ import annotations

from pathlib import Path

from exo_gpu_example.backend import ExampleBackend

from exo_gpu_plugins.testing import BackendContract


class TestExampleBackend(BackendContract):
    backend_class = ExampleBackend
    # Tests this backend knowingly fails, one per line with the reason; none today.
    expected_failures_file = Path(__file__).with_name("expected-failures.txt")
