"""Console output shared by the commands: the consoles, the progress bar and result tables.

Every console here prints strings as plain text (``markup=False``): names, ids, paths, error
messages and dataset strings come from users, and rich markup in them (``x[/]y``,
``[bold red]``, ``[r_v, r_p]``) would be styled away or raise. Styling is given explicitly,
as :func:`styled` pieces, never by formatting text into markup.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from swarmq.engine import FinalReport, SearchSummary, search_summary

if TYPE_CHECKING:
    from swarmq.reporting import SpreadRow
from swarmq.storage import Database


def plain_console(**kwargs: Any) -> Console:
    """A console that prints strings as text, never as markup, and highlights nothing."""
    return Console(markup=False, highlight=False, **kwargs)


console = plain_console()
err_console = plain_console(stderr=True)


def styled(*parts: str | tuple[str, str]) -> Text:
    """One line of text from plain pieces and ``(text, style)`` pairs.

    The pieces are taken literally, so a user's string can be one of them whatever it holds.
    """
    return Text.assemble(*parts)


def print_table(table: Table, *, on: Console | None = None, width: int = 0) -> None:
    """Print ``table`` without cutting any cell of a ``no_wrap`` column.

    Ids, URLs and paths a user must copy go in ``no_wrap`` columns; the other columns fold
    first, and when even folded they do not fit, the table is printed wider than the console
    (a pipe or a log counts as 80 columns) rather than ending an id in "…". ``width`` asks for
    at least that many columns.
    """
    target = on or console
    # Measured without the console's width, which would clamp the answer to it.
    unbounded = target.options.update_width(10_000)
    needed = max(target.measure(table, options=unbounded).minimum, width)
    if needed <= target.width:
        target.print(table)
    else:
        plain_console(file=target.file, width=needed).print(table)


def print_wide(table: Table, width: int = 120) -> None:
    """Print a table on standard output at least ``width`` columns wide: the final tables'
    labels and intervals would otherwise wrap into unreadable cells on an 80-column terminal
    or a pipe (which rich treats as 80 columns)."""
    print_table(table, width=width)


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


class LogLines:
    """Progress as plain lines, for output that is not a terminal.

    A live bar prints nothing to a log file until it stops, which leaves a long unattended run
    silent for hours; where stderr is not a terminal, :meth:`say` prints a line instead, at
    most every ``every`` seconds unless forced.
    """

    def __init__(self, enabled: bool = True, every: float = 30.0) -> None:
        self.active = enabled and not err_console.is_terminal
        self.every = every
        self._last = float("-inf")

    def say(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.active and (force or now - self._last >= self.every):
            self._last = now
            err_console.print(text, highlight=False, soft_wrap=True)


@contextmanager
def search_progress(
    db: Database, search_id: str, *, enabled: bool = True
) -> Iterator[Callable[..., None]]:
    """A progress bar over iterations, showing the best utility and evaluations done."""
    summary = search_summary(db, search_id)
    progress = Progress(
        TextColumn("{task.description}", style="bold", markup=False),  # the search's name
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("iter [cyan]{task.fields[iteration]}[/]"),
        TextColumn("best [green]{task.fields[best]}[/]"),
        TextColumn("evals {task.fields[evals]}"),
        TimeElapsedColumn(),
        console=err_console,
        disable=not enabled,
        transient=False,
    )
    lines = LogLines(enabled)
    started = time.monotonic()
    reported = [-1]
    with progress:
        task = progress.add_task(
            summary.name,
            total=summary.max_iterations + 1,
            iteration=summary.iteration,
            best=fmt(summary.best_utility),
            evals="0",
        )

        def refresh(*_args: Any) -> None:
            s = search_summary(db, search_id)
            applied = s.iteration + (1 if s.status != "running" else 0)
            progress.update(
                task,
                completed=min(applied, s.max_iterations + 1),
                iteration=s.iteration,
                best=fmt(s.best_utility),
                evals=f"{s.evaluations_done}/{s.evaluations_total}",
            )
            if applied != reported[0]:  # one line per applied iteration in a log
                reported[0] = applied
                lines.say(
                    f"{s.name}: {applied}/{s.max_iterations + 1} iterations applied, best "
                    f"{fmt(s.best_utility)}, evaluations {s.evaluations_done}/"
                    f"{s.evaluations_total}, {time.monotonic() - started:.0f} s",
                    force=True,
                )

        refresh()
        yield refresh
        s = search_summary(db, search_id)
        if s.status != "running":
            progress.update(task, total=s.iteration + 1, completed=s.iteration + 1)
        refresh()


def summary_table(rows: list[SearchSummary]) -> Table:
    table = Table(title="searches")
    table.add_column("id", no_wrap=True)  # whole, to be copied (see print_table)
    for col in ("name", "status", "iteration", "best", "evaluations", "created"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r.id,
            r.name,
            r.status,
            f"{r.iteration}/{r.max_iterations}",
            fmt(r.best_utility),
            f"{r.evaluations_done}/{r.evaluations_total}",
            r.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    return table


def final_table(report: FinalReport) -> Table:
    table = Table(title="result")
    table.add_column("")
    table.add_column("dev", justify="right")
    table.add_column("test", justify="right")
    for pos in (report.best_expert, report.global_best):
        table.add_row(pos.label, fmt(pos.dev), fmt(pos.test))
    return table


def spread_table(rows: list[SpreadRow], seeds: list[int]) -> Table:
    """The seed group's summary: mean ± standard deviation over seeds, and the paired
    intervals' verdicts (seeds where the global best is significantly better / worse)."""
    table = Table(title=f"over seeds {', '.join(map(str, seeds))} (mean ± sd)")
    table.add_column("")
    table.add_column("seeds", justify="right")
    table.add_column("dev", justify="right")
    table.add_column("test", justify="right")
    table.add_column("global best - row, test", justify="right")
    table.add_column("better / worse", justify="right")
    for r in rows:
        label = r.label if r.kind == "search" else styled(("baseline: ", "dim"), r.label)
        verdict = f"{r.better} / {r.worse} of {r.intervals}" if r.intervals else ""
        table.add_row(
            label,
            str(r.seeds),
            "-" if r.dev is None else r.dev.describe(),
            "-" if r.test is None else r.test.describe(),
            "" if r.difference is None else r.difference.describe(),
            verdict,
        )
    table.caption = (
        "better / worse: seeds whose paired bootstrap 95% interval of (global best - row) on "
        "test lies above / below 0"
    )
    return table
