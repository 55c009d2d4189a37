"""The device's own ceilings, with no engine in between: the Rust probes (cargo examples of
rust/engine) built and run from here, so every measurement starts in benchmarks/.

    python benchmarks/probes.py [--mib 1024] [--only queue|copy] [--binaries DIR]

- `queue_probe MIB`: each queue family's own DMA rate host -> device, device -> host and device
  -> device, alone and in pairs (what the transfer pipeline can reach at best);
- `copy_probe MIB [h2d|d2h]`: the device-to-device copy kernels beside vkCmdCopyBuffer, then the
  same with one buffer in host memory (the fastest any Vulkan path crosses PCIe).

The probes are built with `cargo build --release --example NAME` in rust/ unless `--binaries`
names a folder holding them already built (the GPU machine has no Rust: docs/gpu-testing.md).
Each probe prints its own table; a probe that fails says so and the next one still runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

RUST = Path(__file__).resolve().parents[1] / "rust"
RUNS = {
    "queue": [("queue_probe", [])],
    "copy": [("copy_probe", []), ("copy_probe", ["h2d"]), ("copy_probe", ["d2h"])],
}


def binary(name: str, folder: Path | None) -> Path:
    """The probe's executable: in `folder`, else built here by cargo."""
    if folder is not None:
        return folder / name
    subprocess.run(["cargo", "build", "--release", "--quiet", "--example", name], cwd=RUST, check=True)
    return RUST / "target" / "release" / "examples" / name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="buffer size in MiB (1024)")
    parser.add_argument("--only", choices=sorted(RUNS), default=None)
    parser.add_argument("--binaries", type=Path, default=None, help="prebuilt probes' folder")
    args = parser.parse_args()
    if args.mib <= 0:
        parser.error(f"--mib must be > 0, not {args.mib}")
    failed = 0
    for group, runs in RUNS.items():
        if args.only not in (None, group):
            continue
        for name, extra in runs:
            command = [str(binary(name, args.binaries)), str(args.mib), *extra]
            print(f"\n==> {' '.join([name, str(args.mib), *extra])}", flush=True)
            result = subprocess.run(command, check=False)
            if result.returncode != 0:
                print(f"{name} failed with exit {result.returncode}", flush=True)
                failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
