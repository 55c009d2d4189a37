"""`exo-gpu check BACKEND`: the conformance kit against an installed backend; exit 1 on a failure."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from exo_gpu_plugins.cli.options import positive_int
from exo_gpu_plugins.cli.render import Column
from exo_gpu_plugins.errors import GPUError

if TYPE_CHECKING:
    from exo_gpu_plugins.cli.options import AddCommand
    from exo_gpu_plugins.cli.render import Screen
    from exo_gpu_plugins.testing.check import CheckReport, KitResult

__all__ = ["cmd_check", "register", "show"]


def register(add: AddCommand) -> None:
    sub = add(
        "check", "run the conformance kit against an installed backend; exit 1 on any failure", cmd_check
    )
    sub.add_argument("backend", help="backend name, e.g. host or vulkan")
    sub.add_argument("--xfail", help="expected-failures file: 'test_id  # reason' per line")
    sub.add_argument("--examples", type=positive_int, help="Hypothesis examples for the state machine")
    sub.add_argument("-v", "--verbose", action="store_true", help="show every test")


def cmd_check(args: argparse.Namespace, screen: Screen) -> int:
    try:
        from exo_gpu_plugins.testing.check import run_check
    except ImportError as exc:
        raise GPUError(
            f"the conformance kit needs pytest, hypothesis and numpy: pip install "
            f"'exo-gpu-plugins[testing]' ({exc})"
        ) from exc
    report = run_check(
        args.backend.strip().lower(),
        xfail_file=args.xfail,
        examples=args.examples,
        verbose=args.verbose and not args.json,
    )
    return show(report, screen, as_json=args.json, verbose=args.verbose)


def show(report: CheckReport, screen: Screen, *, as_json: bool = False, verbose: bool = False) -> int:
    """Draw the report (the clause table, or its JSON; a check that could not run is one line on
    stderr) and return its exit status."""
    if as_json:
        screen.json(report.as_json())
    elif report.result is None:
        screen.err.write(f"exo-gpu: error: {report.error}\n")
    else:
        _table(report, report.result, screen, verbose)
    return report.exit_code


def _table(report: CheckReport, result: KitResult, screen: Screen, verbose: bool) -> None:
    """One row per clause with the first failure of each failing clause, its whole message (the
    lines after the first under it), then errors, warnings and the verdict."""
    what = f" ({report.backend_class})" if report.backend_class else ""
    screen.line(
        f"exo-gpu check {result.label}{what}: {len(result.tests)} tests in {result.duration_s:.1f} s"
    )
    screen.line("")
    rows = []
    for summary in result.clauses.values():
        first = ""
        if summary.first_failure:
            first = f"{summary.first_failure}: {summary.first_reason}"
        elif summary.first_skip_reason:
            first = f"skipped: {summary.first_skip_reason}"
        if verbose:
            first = "\n".join([first, *summary.failures[1:]])
        counts = (summary.failed, summary.skipped, summary.xfailed)
        rows.append([summary.clause, str(summary.passed), *(str(n or "") for n in counts), first])
    columns = [Column("clause"), *(Column(h, "right") for h in ("pass", "fail", "skip", "xfail"))]
    screen.table([*columns, Column("first failure, or why skipped")], rows, gap=2)
    for message in result.errors:
        screen.line(f"\nerror: {message}")
    for message in result.warnings:
        screen.line(f"\nwarning: {message}")
    totals = result.totals()
    verdict = "PASS" if result.ok else "FAIL"
    failed = result.failed_clauses()
    detail = f"; failing clauses: {', '.join(failed)}" if failed else ""
    screen.line(
        f"\n{verdict}: {totals['passed']} passed, {totals['failed']} failed, "
        f"{totals['skipped']} skipped, {totals['xfailed']} expected failures{detail}"
    )
