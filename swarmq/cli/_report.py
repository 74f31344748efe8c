"""``swarmq report``, ``baselines``, ``audit`` and ``history``: seeing and checking a search."""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click
from rich.table import Table
from rich.text import Text

from swarmq.cli._commands import main
from swarmq.cli._output import console, err_console, fmt, plain_console, print_wide, styled
from swarmq.settings import Settings

if TYPE_CHECKING:
    from swarmq.engine import BaselineRun
    from swarmq.reporting import ResultRow
    from swarmq.storage import Database, LocalArtifactStore


def _open(settings: Settings) -> tuple[Database, LocalArtifactStore]:
    from swarmq.storage import Database, LocalArtifactStore

    db = Database(settings.database_url)
    db.check_schema()
    return db, LocalArtifactStore(settings.artifacts)


def _result_table(rows: list[ResultRow]) -> Table:
    table = Table(title="result")
    table.add_column("")
    table.add_column("dev", justify="right")
    table.add_column("test", justify="right")
    intervals = [r.interval for r in rows if r.interval is not None]
    if intervals:
        table.add_column("global best - row, test [95% CI]", justify="right")
        table.caption = (
            f"paired bootstrap over the {intervals[0].n} test items, "
            f"{intervals[0].resamples:,} resamples (seed {intervals[0].seed})"
        )
    for r in rows:
        label = r.label if r.kind == "search" else styled(("baseline: ", "dim"), r.label)
        cells: list[str | Text] = [label, fmt(r.dev), fmt(r.test)]
        if intervals:
            cells.append("" if r.interval is None else r.interval.describe())
        table.add_row(*cells)
    return table


def run_baselines(
    db: Database,
    store: LocalArtifactStore,
    search_id: str,
    top_k: int,
    force: bool = False,
    only: tuple[str, ...] | None = None,
    density: float | None = None,
) -> BaselineRun:
    """Compute (or keep) the baselines of a search, saying what is evaluated on stderr."""
    from swarmq.engine import DEFAULT_DENSITY, compute_baselines

    run = compute_baselines(
        db,
        store,
        search_id,
        top_k=top_k,
        force=force,
        only=only,
        density=DEFAULT_DENSITY if density is None else density,
        progress=lambda msg: err_console.print(styled((f"evaluating {msg}", "dim"))),
    )
    if run.skipped:
        err_console.print(
            styled((f"kept recorded scores: {', '.join(run.skipped)} (--force recomputes)", "dim"))
        )
    for note in run.unavailable:
        err_console.print(styled(("not computed:", "yellow"), f" {note}"), soft_wrap=True)
    return run


def _only(value: str | None) -> tuple[str, ...] | None:
    from swarmq.engine import BASELINES

    if value is None:
        return None
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in BASELINES]
    if unknown or not names:
        raise click.BadParameter(
            f"{unknown[0] if unknown else value!r} is not a baseline; choose among "
            f"{', '.join(BASELINES)} (comma-separated)",
            param_hint="--only",
        )
    return names


_TOP_K = click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Personal bests (by dev utility) in the majority-vote ensemble.",
)


@main.command()
@click.argument("search_id")
@_TOP_K
@click.option(
    "--only",
    help="Comma-separated baselines to compute (default: all): uniform_soup, task_arithmetic, "
    "ties, dare_ties, dare_linear, greedy_soup, lorahub, ensemble.",
)
@click.option(
    "--density",
    type=click.FloatRange(min=0.0, max=1.0, min_open=True),
    default=0.5,
    show_default=True,
    help="Fraction of entries TIES and DARE keep.",
)
@click.option("--force", is_flag=True, help="Recompute the chosen baselines' recorded scores.")
@click.pass_obj
def baselines(
    settings: Settings,
    search_id: str,
    top_k: int,
    only: str | None,
    density: float,
    force: bool,
) -> None:
    """Evaluate the baselines of a completed SEARCH with its model and utility.

    Every expert on test; on dev and test: the uniform soup, task arithmetic, TIES, DARE-TIES
    and DARE-linear (peft's merges, their weight chosen on dev), the greedy soup, a LoraHub
    search with as many dev evaluations as the swarm made, and the top-k majority-vote
    ensemble of personal bests. Every evaluation is recorded, so `swarmq report` shows them
    without a model and `swarmq audit` checks them.
    """
    from swarmq.reporting import load_record, result_rows

    db, store = _open(settings)
    run_baselines(db, store, search_id, top_k, force, _only(only), density)
    print_wide(_result_table(result_rows(load_record(db, search_id))))


@main.command()
@click.argument("search_id")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write index.html, the PNG figures and summary.json into.",
)
@click.option(
    "--baselines", "with_baselines", is_flag=True, help="Compute the baselines first (model)."
)
@_TOP_K
@click.option(
    "--overwrite", is_flag=True, help="Replace an index.html in --out that swarmq did not write."
)
@click.pass_obj
def report(
    settings: Settings,
    search_id: str,
    out_dir: Path,
    with_baselines: bool,
    top_k: int,
    overwrite: bool,
) -> None:
    """Write an HTML report of SEARCH with PNG figures, from the record alone."""
    from swarmq.reporting import write_report

    db, store = _open(settings)
    if with_baselines:
        run_baselines(db, store, search_id, top_k)
    result = write_report(db, search_id, out_dir, overwrite=overwrite)
    console.print(
        f"report written to {result.index} ({len(result.figures)} figures, "
        f"{result.total_seconds:.2f} s)",
        highlight=False,
    )


@main.command()
@click.argument("search_id")
@click.option(
    "--max-mismatches",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Stop after this many mismatches.",
)
@click.option(
    "--check-experts", is_flag=True, help="Also compare the experts with the pool on disk."
)
@click.option(
    "--cache-mb",
    type=click.IntRange(min=1),
    default=2048,
    show_default=True,
    help="Memory for vectors kept between iterations.",
)
@click.option(
    "--reevaluate",
    "reevaluate",
    type=click.IntRange(min=0),
    default=0,
    metavar="K",
    help="Also run K sampled recorded dev evaluations again (the model is loaded) and compare.",
)
@click.option(
    "--final",
    is_flag=True,
    help="Also run the final table's test evaluations again and compare.",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="Accepted difference of a re-evaluated utility: 0 (exact) on the recording device "
    "and dtype; above 0 on another device or dtype.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_obj
def audit(
    settings: Settings,
    search_id: str,
    max_mismatches: int,
    check_experts: bool,
    cache_mb: int,
    reevaluate: int,
    final: bool,
    tolerance: float,
    as_json: bool,
    quiet: bool,
) -> None:
    """Recompute every position and velocity of SEARCH from its record; name the first mismatch.

    With --reevaluate K and --final, also evaluate recorded positions again and compare their
    utilities with the record. Exit status 0 when the record agrees with its recomputation, 1
    on a mismatch.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from swarmq.reporting import audit_search

    db, store = _open(settings)
    progress = Progress(
        "audit",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=quiet or as_json,
        transient=True,
    )
    with progress:
        task = progress.add_task("audit", total=None)
        result = audit_search(
            db,
            store,
            search_id,
            max_mismatches=max_mismatches,
            check_experts=check_experts,
            cache_bytes=cache_mb * 2**20,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
            reevaluate=reevaluate,
            final=final,
            tolerance=tolerance,
        )
    if as_json:
        out: dict[str, Any] = {
            k: v for k, v in vars(result).items() if k not in ("mismatches", "notes")
        }
        out["ok"] = result.ok
        out["mismatches"] = [vars(m) | {"message": str(m)} for m in result.mismatches]
        out["notes"] = list(result.notes)
        click.echo(json.dumps(out, indent=2))
    else:
        mib = result.bytes_read / 2**20
        summary = (
            f"{result.iterations} iterations, {result.states} particle states, "
            f"{result.updates} updates recomputed, {result.baselines} baseline evaluations, "
            f"{result.reevaluated} evaluations run again, "
            f"{result.artifacts_read} artifacts "
            f"({mib:.1f} MiB) read in {result.seconds:.2f} s"
        )
        if result.ok:
            console.print(
                styled((f"audit of {search_id} passed", "green"), f": {summary}"), soft_wrap=True
            )
        else:
            console.print(
                styled(
                    (f"audit of {search_id} failed", "bold red"),
                    f": first mismatch at {result.mismatches[0]}",
                ),
                soft_wrap=True,
            )
            for m in result.mismatches[1:]:
                console.print(f"  also: {m}", highlight=False, soft_wrap=True)
            console.print(f"checked before stopping: {summary}", highlight=False, soft_wrap=True)
        for note in result.notes:
            console.print(styled((f"note: {note}", "dim")), soft_wrap=True)
    if not result.ok:
        sys.exit(1)


_SHORT = 12  # hash characters shown in the table view
_HISTORY_WIDTH = 124


def _history_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="history")
    for col in ("it", "p", "utility", "best", "restart", "λ", "factors", "position", "velocity"):
        table.add_column(col, justify="right" if col in ("it", "p", "utility", "best") else "left")
    for r in rows:
        factors = (
            " ".join(f"{r[k]:.3f}" for k in ("r_v", "r_p", "r_g", "r_w"))
            if r["r_v"] is not None
            else f"initial ({r['initial_velocity']})"
        )
        table.add_row(
            str(r["iteration"]),
            str(r["particle"]),
            fmt(r["utility"]) + ("" if r["evaluated"] is not False else " (skipped)"),
            f"{fmt(r['best_utility'])} @{r['best_iteration']}",
            "yes" if r["restarted"] else "",
            "" if r["step_length"] is None else f"{r['step_length']:.4g}",
            factors,
            r["position_hash"][:_SHORT],
            (r["velocity_hash"] or "-")[:_SHORT],
        )
    return table


@main.command()
@click.argument("search_id")
@click.option("--particle", type=int, help="Only this particle.")
@click.option(
    "--format",
    "fmt_",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="table: a summary view; csv and json: every recorded field.",
)
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file instead of standard output.",
)
@click.pass_obj
def history(
    settings: Settings, search_id: str, particle: int | None, fmt_: str, out_file: Path | None
) -> None:
    """Print or export the full history of SEARCH: every state and the inputs of its update."""
    from swarmq.reporting import history_document, history_rows, write_csv, write_json

    db, _store = _open(settings)
    if fmt_ == "table":
        rows = list(history_rows(db, search_id, particle=particle))
        if out_file is not None:
            with out_file.open("w", encoding="utf-8") as f:
                plain_console(file=f, width=_HISTORY_WIDTH).print(_history_table(rows))
        else:
            # The table needs about 120 columns; a narrower terminal (or a pipe, which rich
            # treats as 80 columns) would squeeze every cell onto several lines.
            wide = plain_console(width=max(console.width, _HISTORY_WIDTH))
            wide.print(_history_table(rows))
        return
    stdout: IO[str] = sys.stdout
    sink: Any = (
        out_file.open("w", encoding="utf-8", newline="")
        if out_file is not None
        else nullcontext(stdout)
    )
    with sink as stream:
        if fmt_ == "csv":
            count = write_csv(history_rows(db, search_id, particle=particle), stream)
        else:
            document = history_document(db, search_id, particle=particle)
            write_json(document, stream)
            count = len(document["states"])
    if out_file is not None:
        err_console.print(f"{count} rows written to {out_file}", highlight=False)
