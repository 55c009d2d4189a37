"""How long exo's startup pays for `import exo_gpu_plugins` plus discovery of every installed plugin
(none initialized), measured inside fresh processes so the interpreter's own start is excluded.

Target (issue: core package): median of 10 processes under 150 ms. The reference row is what pydantic +
pluggy alone cost: the core defers its pydantic models until a backend is used, so discovery skips it.

    python benchmarks/import_time.py [--runs 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

PROBES = {
    "exo_gpu_plugins import + discovery": (
        "import time; t = time.perf_counter(); import exo_gpu_plugins; "
        "r = exo_gpu_plugins.get_registry(); "
        "print((time.perf_counter() - t) * 1e3, len(r.plugins))"
    ),
    "reference: import pydantic + pluggy": (
        "import time; t = time.perf_counter(); import pydantic, pluggy; "
        "from pydantic import BaseModel\nclass M(BaseModel):\n    x: int\n"
        "print((time.perf_counter() - t) * 1e3, 0)"
    ),
}


def measure(code: str, runs: int) -> tuple[list[float], int]:
    times: list[float] = []
    plugins = 0
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        millis, count = out.stdout.split()
        times.append(float(millis))
        plugins = int(count)
    return times, plugins


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for label, code in PROBES.items():
        times, plugins = measure(code, args.runs)
        rows.append(
            {
                "what": label,
                "median_ms": statistics.median(times),
                "min_ms": min(times),
                "max_ms": max(times),
                "plugins": plugins,
                "runs": args.runs,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'what':<40} {'median ms':>10} {'min':>8} {'max':>8} {'plugins':>8}")
    for row in rows:
        print(
            f"{row['what']:<40} {row['median_ms']:>10.1f} {row['min_ms']:>8.1f} "
            f"{row['max_ms']:>8.1f} {row['plugins']:>8}"
        )
    verdict = "meets" if rows[0]["median_ms"] < 150 else "MISSES"
    print(f"\ntarget: median < 150 ms -> {verdict} ({rows[0]['median_ms']:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
