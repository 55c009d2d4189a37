"""How the CLI writes to a person: rich tables, progress bars and live views on a terminal; plain,
colourless text of a stable width when the output is a pipe or a file; JSON as it always was.

`rich` is imported here only, and this module only by the CLI, so `import exo_gpu_plugins` and
plugin discovery never pay for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from exo_gpu_plugins.sizes import format_bytes

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.table import Table

__all__ = ["Column", "Screen", "cell", "format_bytes"]

# Wide enough that piped tables never wrap: their layout must not depend on who reads them.
PLAIN_WIDTH = 10_000


@dataclass(frozen=True)
class Column:
    """A table column: its header and how its cells sit (numbers right, text left)."""

    header: str
    justify: str = "left"
    max_width: int | None = None


def cell(value: object) -> str:
    """A table cell: `-` for a figure not known, floats to two decimals."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@dataclass
class Screen:
    """The two output streams of one command run, and the consoles drawn on them."""

    out: TextIO
    err: TextIO
    _consoles: dict[int, Console] = field(default_factory=dict)

    @property
    def interactive(self) -> bool:
        """stdout is a terminal: redraw in place, use colour."""
        return _tty(self.out)

    @property
    def shows_progress(self) -> bool:
        """stderr is a terminal: progress bars go there (piped, nothing is written)."""
        return _tty(self.err)

    def console(self, stream: TextIO | None = None) -> Console:
        stream = self.out if stream is None else stream
        made = self._consoles.get(id(stream))
        if made is None:
            made = self._consoles[id(stream)] = _console(stream)
        return made

    # ----------------------------------------------------------------------------------------------

    def json(self, data: object) -> None:
        """The `--json` form: indented, keys as the records name them."""
        self.out.write(json.dumps(data, indent=2, default=str) + "\n")
        self.out.flush()

    def line(self, text: str) -> None:
        """A line of plain text (no markup is interpreted)."""
        self.console().print(text, markup=False, highlight=False)

    def table(
        self,
        columns: Sequence[Column | str],
        rows: Sequence[Sequence[object]],
        title: str | None = None,
        *,
        gap: int = 1,
    ) -> None:
        self.print(self.make_table(columns, rows, title, gap=gap))

    def make_table(
        self,
        columns: Sequence[Column | str],
        rows: Sequence[Sequence[object]],
        title: str | None = None,
        *,
        gap: int = 1,
    ) -> Table:
        """A table of `rows` (cells taken as plain text, never markup: a test id's `[param]` stays
        as it is), `gap` spaces between columns; a cell with several lines spans several lines."""
        from rich import box
        from rich.table import Table
        from rich.text import Text

        plain = not self.interactive
        table = Table(
            title=title,
            title_justify="left",
            box=_plain_box() if plain else box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
            padding=(0, gap, 0, 0),
            header_style=None if plain else "bold",
            title_style=None if plain else "bold",
        )
        for column in columns:
            spec = column if isinstance(column, Column) else Column(column)
            table.add_column(
                spec.header,
                justify=spec.justify,  # type: ignore[arg-type]
                max_width=spec.max_width,
                overflow="ellipsis",
                no_wrap=spec.max_width is not None,
            )
        for row in rows:
            table.add_row(*(Text(cell(value)) for value in row))
        return table

    def print(self, renderable: RenderableType) -> None:
        """Draw on stdout; piped, without the trailing blanks rich pads cells with."""
        console = self.console()
        if self.interactive:
            console.print(renderable)
            return
        with console.capture() as captured:
            console.print(renderable)
        text = "\n".join(line.rstrip() for line in captured.get().splitlines())
        self.out.write(text + "\n")

    # ----------------------------------------------------------------------------------------------

    @contextmanager
    def progress(self, total: int, description: str) -> Iterator[Callable[[int], None]]:
        """A byte progress bar with rate and time left on stderr when it is a terminal; yields
        `advance(byte_count)`. Piped, it draws nothing: a script reads only the result."""
        with self.progress_bars({"": total}, {"": description}) as advance:
            yield lambda count: advance("", count)

    @contextmanager
    def progress_bars(
        self, totals: dict[str, int], descriptions: dict[str, str]
    ) -> Iterator[Callable[[str, int], None]]:
        """One byte progress bar per key (a device, say), each with its rate, on stderr when it is
        a terminal; yields `advance(key, byte_count)`. Piped, it draws nothing."""
        if not self.shows_progress:
            yield lambda _key, _count: None
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console(self.err),
            transient=True,
        ) as bar:
            tasks = {key: bar.add_task(descriptions[key], total=total) for key, total in totals.items()}
            yield lambda key, count: bar.advance(tasks[key], count)

    @contextmanager
    def status(self, text: str) -> Iterator[None]:
        """A spinner with `text` on stderr while a step of unknown length runs (terminal only)."""
        if not self.shows_progress:
            yield
            return
        with self.console(self.err).status(text):
            yield

    @contextmanager
    def steps(self, total: int) -> Iterator[Callable[[str], None]]:
        """A step counter with the current step's name and time elapsed, on a terminal only."""
        if not self.shows_progress:
            yield lambda _text: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console(self.err),
            transient=True,
        ) as bar:
            task = bar.add_task("", total=total)

            def step(text: str) -> None:
                bar.update(task, advance=1, description=text)

            yield step


def _console(stream: TextIO) -> Console:
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich exits with status 1 here; the CLI's main() ends quietly with 0 instead.
            self.quiet = True
            raise BrokenPipeError

    if _tty(stream):
        return _Console(file=stream, highlight=False)
    return _Console(
        file=stream,
        width=PLAIN_WIDTH,
        color_system=None,
        force_terminal=False,
        force_interactive=False,
        highlight=False,
        emoji=False,
        soft_wrap=True,
    )


def _plain_box() -> Any:
    """Like rich's SIMPLE_HEAD, in ASCII: a `-` rule under the header, nothing else."""
    from rich.box import Box

    return Box("    \n    \n -- \n    \n    \n    \n    \n    \n", ascii=True)
