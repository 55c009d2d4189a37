"""The fixture backend: host memory under another name. Importing it is recorded, so tests can
prove discovery does not import backend modules."""

import os

from exo_gpu_plugins.host.backend import HostBackend

IMPORTED = True


def probe():
    return os.environ.get("FIXTURE_UNAVAILABLE") or None


class FixtureBackend(HostBackend):
    name = "fixture"
