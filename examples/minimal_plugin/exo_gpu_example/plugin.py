"""The plugin module named by the entry point: it only describes the backend.

Discovery imports this module for every exo start, so it stays tiny and imports no backend code:
the backend class is named by its import path and loaded only when "example" is selected.
"""

from __future__ import annotations

from exo_gpu_plugins.hookspecs import BackendInfo, hookimpl


@hookimpl
def exo_gpu_backends() -> list[BackendInfo]:
    """The backends this distribution provides."""
    return [
        BackendInfo(
            name="example",
            backend="exo_gpu_example.backend:ExampleBackend",
            probe=None,  # always available; a GPU backend points this at a cheap driver check
            priority=1,  # automatic selection tries higher priorities first (host has 0)
            # An example is used only when asked for by name (`--backend example`): it must never
            # win automatic selection over host. A real GPU backend leaves `automatic` at True.
            automatic=False,
            description="two emulated 1 GiB devices whose memory is a dict of bytearrays",
        )
    ]
