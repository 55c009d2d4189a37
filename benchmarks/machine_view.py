"""Does `exo-gpu` see the whole machine? A second process holds memory on the first Vulkan device;
then `exo-gpu devices` (its whole-device used memory) is compared with nvidia-smi's
`memory.used`, and `exo-gpu ps` is asked whether it lists the holder's pid.

    python benchmarks/machine_view.py              # the holder takes 4 GiB
    python benchmarks/machine_view.py --size 1G --json

Prints one row per Vulkan device: exo-gpu's used figure and its source, nvidia-smi's (matched by
UUID, where nvidia-smi exists), the difference in percent of nvidia-smi's figure, and whether `ps`
lists the holder ("yes", "no", or "cannot tell" with the reason). Whatever could not be read is said
in the row's note. The holder is killed on every way out (also Ctrl-C); the exit status is 0 when
the comparison ran, 1 when the holder could not start.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

HOLDER = """
import asyncio, sys
from exo_gpu_plugins.registry import get_registry

async def main() -> None:
    backend = get_registry().entry("vulkan").load_class()()
    await backend.initialize()
    device = backend.list_devices()[0].device_id
    handle = await backend.allocate(device, int(sys.argv[1]))  # zero-filled: every page touched
    print("holding", device, handle.size_bytes, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes
    await backend.shutdown()

asyncio.run(main())
"""


@dataclass(frozen=True)
class Row:
    """One device: exo-gpu's view beside nvidia-smi's."""

    device_id: str
    name: str
    uuid: str | None
    exo_used_bytes: int | None
    exo_used_source: str | None
    smi_used_bytes: int | None
    difference_percent: float | None
    holder_listed: str  # "yes", "no", "cannot tell"
    holder_bytes: int | None
    note: str


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def exo_gpu(*argv: str) -> Any:
    """`exo-gpu ARGV --json` with this interpreter; its JSON, or an error naming what failed."""
    result = subprocess.run(
        [sys.executable, "-m", "exo_gpu_plugins", *argv, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"exo-gpu {' '.join(argv)} failed: {result.stderr.strip()}")
    return json.loads(result.stdout)


def nvidia_smi() -> tuple[dict[str, int] | None, str | None]:
    """Used bytes by GPU UUID from nvidia-smi, or None and why not."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None, "nvidia-smi is not installed here"
    result = subprocess.run(
        [smi, "--query-gpu=uuid,memory.used", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        return None, f"nvidia-smi failed: {result.stderr.strip() or result.stdout.strip()}"
    used: dict[str, int] = {}
    for line in result.stdout.splitlines():
        uuid, _, mib = (part.strip() for part in line.partition(","))
        if uuid and mib.isdigit():
            used[uuid] = int(mib) << 20  # nvidia-smi's MiB
    return used, None


def compare(
    devices: Sequence[dict[str, Any]],
    processes: Sequence[dict[str, Any]],
    smi: dict[str, int] | None,
    smi_missing: str | None,
    holder_pid: int,
) -> list[Row]:
    """The rows, from `exo-gpu devices --json`, `exo-gpu ps --json` and nvidia-smi's figures."""
    by_id = {entry["device_id"]: entry for entry in processes}
    rows = []
    for device in devices:
        notes: list[str] = []
        used = device.get("device_used_bytes")
        if used is None:
            notes.append(f"exo-gpu: {device.get('device_used_note')}")
        uuid = device.get("uuid")
        smi_used = None
        if smi is None:
            notes.append(str(smi_missing))
        elif uuid in smi:
            smi_used = smi[uuid]
        else:
            notes.append(f"nvidia-smi does not list this device's UUID {uuid}")
        difference = None
        if used is not None and smi_used:
            difference = round(100.0 * (used - smi_used) / smi_used, 2)
        usage = by_id.get(device["device_id"], {})
        listed = usage.get("processes")
        holder_bytes = None
        if listed is None:
            holder = "cannot tell"
            notes.append(f"exo-gpu ps: {usage.get('processes_note')}")
        else:
            match = [p for p in listed if p["pid"] == holder_pid]
            holder = "yes" if match else "no"
            holder_bytes = match[0]["used_bytes"] if match else None
            if not match and usage.get("processes_note"):
                notes.append(f"exo-gpu ps: {usage['processes_note']}")
        rows.append(
            Row(
                device_id=device["device_id"],
                name=device["name"],
                uuid=uuid,
                exo_used_bytes=used,
                exo_used_source=device.get("device_used_source"),
                smi_used_bytes=smi_used,
                difference_percent=difference,
                holder_listed=holder,
                holder_bytes=holder_bytes,
                note="; ".join(notes),
            )
        )
    return rows


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / (1 << 30):.3f}"


def render(rows: Sequence[Row], holder_pid: int, size: int) -> str:
    lines = [
        f"holder pid {holder_pid} holds {size / (1 << 30):.2f} GiB on the first Vulkan device",
        "",
        f"{'device':<10} {'exo-gpu used GiB':>16} {'nvidia-smi GiB':>14} {'diff %':>7} "
        f"{'ps lists holder':<16} source",
    ]
    for row in rows:
        diff = "-" if row.difference_percent is None else f"{row.difference_percent:+.2f}"
        held = f" ({_gib(row.holder_bytes)} GiB)" if row.holder_bytes is not None else ""
        lines.append(
            f"{row.device_id:<10} {_gib(row.exo_used_bytes):>16} {_gib(row.smi_used_bytes):>14} "
            f"{diff:>7} {row.holder_listed + held:<16} {row.exo_used_source or '-'}"
        )
    for row in rows:
        if row.note:
            lines.append(f"{row.device_id}: could not read: {row.note}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=4 << 30, help="bytes to hold (4G)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(args.size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        ready = holder.stdout.readline()
        if not ready.startswith("holding"):
            holder.kill()
            _, err = holder.communicate(timeout=60)
            print(f"machine_view: the holder could not start: {err.strip()}", file=sys.stderr)
            return 1
        devices = [d for d in exo_gpu("devices", "--backend", "vulkan")]
        processes = exo_gpu("ps", "--backend", "vulkan")
        smi, smi_missing = nvidia_smi()
        rows = compare(devices, processes, smi, smi_missing, holder.pid)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=60)
    if args.json:
        print(
            json.dumps(
                {"holder_pid": holder.pid, "size_bytes": args.size, "rows": [asdict(r) for r in rows]},
                indent=2,
            )
        )
    else:
        print(render(rows, holder.pid, args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
