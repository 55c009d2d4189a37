from exo_gpu_plugins import hookimpl


@hookimpl
def exo_gpu_backends():
    raise RuntimeError("fixture: the hook itself fails")
