"""Long fuzzing: the conformance kit's state machine against every backend that can run here, until
at least `--steps` steps per backend were checked against the byte model (`make fuzz`: 10,000).

    python benchmarks/fuzz.py [--steps 10000] [--backends host vulkan]
"""

from __future__ import annotations

import argparse
import sys
import time

from exo_gpu_plugins import get_registry
from exo_gpu_plugins.testing.state_machine import kit_settings, run_state_machine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000, help="at least this many steps per backend")
    parser.add_argument("--backends", nargs="+")
    args = parser.parse_args()
    registry = get_registry()
    names = args.backends or [
        n for n in registry.names() if registry.entry(n).unavailable_reason() is None
    ]
    for name in names:
        factory = registry.entry(name).load_class()
        total, rounds, start = 0, 0, time.perf_counter()
        while total < args.steps:
            # No example database: each round explores fresh programs instead of replaying.
            total += run_state_machine(factory, settings=kit_settings(200, 50, database=False))
            rounds += 1
        print(
            f"{name}: {total} steps in {rounds} x 200 examples (up to 50 steps each), "
            f"{time.perf_counter() - start:.1f} s, no divergence from the byte model"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
