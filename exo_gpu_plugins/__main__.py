"""`python -m exo_gpu_plugins`: the `exo-gpu` command."""

from exo_gpu_plugins.cli import run

run()
