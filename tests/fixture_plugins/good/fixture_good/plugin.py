"""A well-behaved plugin: one backend, 'fixture', built on the host backend's semantics."""

from exo_gpu_plugins import BackendInfo, hookimpl


@hookimpl
def exo_gpu_backends():
    return [
        BackendInfo(
            name="fixture",
            backend="fixture_good.backend:FixtureBackend",
            probe="fixture_good.backend:probe",
            priority=50,
            description="test fixture",
        )
    ]
