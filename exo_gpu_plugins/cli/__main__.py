"""`python -m exo_gpu_plugins.cli`, the same as `exo-gpu`."""

from exo_gpu_plugins.cli import run

run()
