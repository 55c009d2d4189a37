"""The host backend: device memory emulated in this process's RAM, the contract's reference.

`exo_gpu_plugins.host.backend.HostBackend` is the class; this package imports nothing eagerly so that
plugin discovery (which imports `host.plugin`) stays cheap."""
