from exo_gpu_plugins import BackendInfo, hookimpl


@hookimpl
def exo_gpu_backends():
    return [BackendInfo(name="fixture", backend="fixture_good.backend:FixtureBackend")]
