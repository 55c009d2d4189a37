"""The host backend: device memory emulated in this process's RAM, the contract's reference."""

from exo_gpu_plugins.host.backend import HostBackend

__all__ = ["HostBackend"]
