"""Peak resident memory during a large upload: the copy path must not make full-size temporaries.

Target (issue: copy speed): peak RSS during a 256 MiB upload stays under input size + 64 MiB above
the RSS before it. Each backend runs in its own fresh process, since the peak (ru_maxrss) only rises.

    python benchmarks/upload_memory.py [--size 256M] [--backends host vulkan]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import asyncio, json, os, resource, sys
import exo_gpu_plugins

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

async def main(name, size):
    backend = await exo_gpu_plugins.open_backend(name)
    device = backend.list_devices()[0].device_id
    small = await backend.allocate(device, 1 << 20)            # warm the engine up
    await backend.copy_to_device(os.urandom(1 << 20), small)
    handle = await backend.allocate(device, size)
    data = bytearray(os.urandom(1 << 20)) * (size >> 20)      # the caller's input
    before = rss()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    await backend.copy_to_device(data, handle)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ok = await backend.copy_from_device(handle, size - 4096, 4096) == bytes(data[-4096:])
    await backend.shutdown()
    print(json.dumps({"backend": name, "size": size, "rss_before": before,
                      "peak_before": peak_before, "peak_after": peak, "exact": ok}))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256 << 20)
    parser.add_argument("--backends", nargs="+", default=["vulkan", "host"])
    args = parser.parse_args()
    print(
        f"{'backend':<8} {'input MiB':>9} {'RSS before':>11} {'peak during':>12} {'growth':>8} "
        f"{'limit':>8}  verdict"
    )
    status = 0
    for name in args.backends:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, name, str(args.size)],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            print(f"{name:<8} could not run: {out.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        # The lifetime peak after the upload, minus the RSS just before it: an upper bound on what
        # the upload added (any earlier, higher peak only makes this figure larger).
        growth = max(0, r["peak_after"] - r["rss_before"])
        limit = 64 << 20  # above the RSS that already holds the input
        ok = growth < limit and r["exact"]
        status |= 0 if ok else 1
        mib = 1 << 20
        print(
            f"{name:<8} {r['size'] / mib:>9.0f} {r['rss_before'] / mib:>10.1f}M "
            f"{r['peak_after'] / mib:>11.1f}M {growth / mib:>7.1f}M {limit / mib:>7.0f}M  "
            f"{'meets' if ok else 'MISSES'}"
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
