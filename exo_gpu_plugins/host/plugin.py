"""Registers the host backend through the same hook every external plugin implements."""

from __future__ import annotations

from exo_gpu_plugins.hookspecs import BackendInfo, hookimpl

__all__ = ["exo_gpu_backends"]


@hookimpl
def exo_gpu_backends() -> list[BackendInfo]:
    """The host backend: always available, chosen last in automatic selection."""
    return [
        BackendInfo(
            name="host",
            backend="exo_gpu_plugins.host.backend:HostBackend",
            probe=None,
            priority=0,
            description="device memory emulated in host RAM (reference and fallback)",
        )
    ]
