"""`exo-gpu bench`: copy speed of a backend beside every peer present, as one table (the
measuring is exo_gpu_plugins/bench.py's; this module parses arguments, draws progress and the
table)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from exo_gpu_plugins.cli.options import positive_int, size_argument
from exo_gpu_plugins.cli.render import Column
from exo_gpu_plugins.cli.target import first_device, open_target, resolve

if TYPE_CHECKING:
    from exo_gpu_plugins.bench import BenchReport
    from exo_gpu_plugins.cli.options import AddCommand
    from exo_gpu_plugins.cli.render import Screen

__all__ = ["cmd_bench", "register", "show"]


def register(add: AddCommand) -> None:
    sub = add(
        "bench",
        "copy speed of a backend beside every peer present (numpy memcpy, wgpu-py, "
        "CUDA through torch), as one table",
        cmd_bench,
    )
    sub.add_argument(
        "--backend", help="backend name (default: the backend of --device, else as exo selects)"
    )
    sub.add_argument("--device", help="device id, e.g. host:0 (default: the backend's first device)")
    sub.add_argument("--sizes", type=size_argument, nargs="+", help="bulk copy sizes (default 64M 256M)")
    sub.add_argument(
        "--d2d-size",
        type=size_argument,
        help="device-to-device size (default: the largest of --sizes; 1G without --sizes)",
    )
    sub.add_argument("--repeats", type=positive_int, default=5, help="repetitions per figure (median)")
    sub.add_argument("--no-peers", action="store_true", help="measure this project only")


async def cmd_bench(args: argparse.Namespace, screen: Screen) -> int:
    from exo_gpu_plugins.bench import MiB, run_benchmark, step_count

    sizes = list(dict.fromkeys(args.sizes or (64 * MiB, 256 * MiB)))
    d2d_size = args.d2d_size or (max(sizes) if args.sizes else 1 << 30)
    target = resolve(args.backend, args.device)
    backend = await open_target(target)
    try:
        device = first_device(backend, target)
        cross = len(backend.list_devices()) > 1
    except BaseException:
        await backend.shutdown()
        raise
    # The table is drawn once the progress bar has gone, so the two never overwrite each other.
    with screen.steps(step_count(sizes, not args.no_peers, cross)) as step:
        report = await run_benchmark(
            backend,
            device,
            sizes=sizes,
            d2d_size=d2d_size,
            repeats=args.repeats,
            peers=not args.no_peers,
            step=step,
        )
    if args.json:
        screen.json(report.as_json())
    else:
        show(report, screen)
    return 0


def show(report: BenchReport, screen: Screen) -> None:
    """The table: one row per figure, our value, each peer's, and our ratio to each peer."""
    versions = ", ".join(f"{name} {version}" for name, version in report.peer_versions.items())
    peers_text = (versions or "none") if report.peers_measured else "not measured"
    screen.line(
        f"{report.device.name} via {report.label}; {report.date}; {report.cpus} CPUs; "
        f"peers: {peers_text}"
    )
    screen.line("")
    peers = report.peers
    columns = [
        Column("figure"),
        *(Column(header, "right") for header in (report.backend, *peers, *(f"x {p}" for p in peers))),
    ]
    rows = []
    for fig in report.figures:
        values = [fig.ours, *(fig.peers.get(p) for p in peers)]
        ratios = [fig.ratio(p) for p in peers]
        rows.append(
            [
                f"{fig.label} ({fig.unit})",
                *(_figure(v) for v in values),
                *("-" if r is None else f"{r:.2f}x" for r in ratios),
            ]
        )
    screen.table(columns, rows)
    screen.line("ratios: >1x means this project is faster (higher GB/s or lower us)")


def _figure(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
