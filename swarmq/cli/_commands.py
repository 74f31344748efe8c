"""The ``swarmq`` command line."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from swarmq.cli._output import (
    console,
    err_console,
    final_table,
    fmt,
    print_table,
    search_progress,
    styled,
    summary_table,
)
from swarmq.errors import SwarmqError
from swarmq.settings import Settings, load_settings


class _Group(click.Group):
    """Prints swarmq's own errors as one clear line (exit status 2), without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SwarmqError as err:
            from swarmq.storage import redact_url

            # Every message passes the redaction too: a driver's error may quote a URL.
            err_console.print(
                styled(("error:", "bold red"), f" {redact_url(str(err))}"), soft_wrap=True
            )
            sys.exit(2)
        except OSError as err:
            # A path the user gave (--out, --db, a file to read) that cannot be used: one line
            # naming it, not a traceback. Errors without a path are not the user's to fix.
            if err.filename is None:
                raise
            path = err.filename if err.filename2 is None else err.filename2
            err_console.print(
                styled(
                    ("error:", "bold red"),
                    f" cannot use {str(path)!r}: {err.strerror or err}; choose another path "
                    "or fix its permissions",
                ),
                soft_wrap=True,
            )
            sys.exit(2)


@click.group(cls=_Group)
@click.option(
    "--db",
    "database_url",
    envvar="SWARMQ_DATABASE_URL",
    help="SQLAlchemy URL of the record (default: SQLite in ./.swarmq).",
)
@click.option(
    "--artifacts",
    envvar="SWARMQ_ARTIFACTS",
    type=click.Path(file_okay=False),
    help="Artifact store folder (default: ./.swarmq/artifacts).",
)
@click.option(
    "--broker",
    "broker_url",
    envvar="SWARMQ_BROKER_URL",
    help="Broker URL of the distributed mode (redis://..., amqp://...); none: embedded.",
)
@click.option(
    "--settings",
    "settings_file",
    envvar="SWARMQ_SETTINGS",
    type=click.Path(dir_okay=False),
    help="Settings file (TOML); options and SWARMQ_* variables take precedence over it.",
)
@click.version_option(package_name="swarmq")
@click.pass_context
def main(
    ctx: click.Context,
    database_url: str | None,
    artifacts: str | None,
    broker_url: str | None,
    settings_file: str | None,
) -> None:
    """swarmq: Model Swarms search over LLM expert adapters, crash-safe and resumable."""
    # Model loading bars and library deprecation notices would drown swarmq's own progress.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")

    # Values click read from SWARMQ_* are left to load_settings, which records their source.
    def given(name: str, value: str | None) -> str | None:
        return None if ctx.get_parameter_source(name) == ParameterSource.ENVIRONMENT else value

    ctx.obj = load_settings(
        given("database_url", database_url),
        given("artifacts", artifacts),
        broker_url=given("broker_url", broker_url),
        settings_file=settings_file,
    )


def _runner(settings: Settings) -> Any:
    from swarmq.execution import EmbeddedRunner

    return EmbeddedRunner(settings)


def _drive(runner: Any, search_id: str, quiet: bool) -> None:
    from swarmq.engine import search_summary

    with search_progress(runner.runtime.db, search_id, enabled=not quiet) as refresh:
        runner.drive(search_id, on_message=refresh)
    summary = search_summary(runner.runtime.db, search_id)
    if summary.status == "failed":
        # The reason is the one line to act on; the exit status says the run did not finish.
        reason = summary.stop_reason or "no reason recorded"
        if "swarmq resume" not in reason:
            reason += f"; fix the cause, then run: swarmq resume {search_id}"
        raise SwarmqError(f"search {search_id} failed: {reason}")
    _print_result(runner.runtime.db, search_id)


def _print_result(db: Any, search_id: str) -> None:
    from swarmq.engine import final_report, search_summary

    s = search_summary(db, search_id)
    console.print(styled("search ", (s.id, "bold"), f" {s.status}: {s.stop_reason or ''}"))
    report = final_report(db, search_id)
    if report is not None:
        console.print(final_table(report))


def _seeds(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        seeds = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(x < 0 for x in seeds) or len(set(seeds)) != len(seeds):
        raise click.BadParameter(
            f"{value!r}: give distinct non-negative integers separated by commas, e.g. 0,1,2",
            param_hint="--seeds",
        )
    return seeds


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--seeds",
    help="Run the search once per seed (comma-separated, e.g. 0,1,2), each seed replacing the "
    "file's; rerunning the same command continues the group.",
)
@click.option(
    "--group",
    "label",
    help="With --seeds: a label telling this group apart from another group of the same file.",
)
@click.option(
    "--baselines",
    "with_baselines",
    is_flag=True,
    help="With --seeds: compute every search's baselines (swarmq baselines) and summarise them.",
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="With --baselines: personal bests in the majority-vote ensemble.",
)
@click.pass_obj
def run(
    settings: Settings,
    config: Path,
    quiet: bool,
    seeds: str | None,
    label: str | None,
    with_baselines: bool,
    top_k: int,
) -> None:
    """Run the search in CONFIG to completion, in this process.

    With --seeds, run it once per seed (a seed group: ordinary recorded searches, found again
    by a rerun of the command, which continues where it stopped) and print the mean and spread
    of the final tables over the seeds.
    """
    from swarmq.config import load_config

    cfg = load_config(config)
    chosen = _seeds(seeds)
    if chosen is None:
        if label is not None or with_baselines:
            raise click.UsageError("--group and --baselines go with --seeds")
        runner = _runner(settings)
        search_id = runner.submit(cfg)
        err_console.print(
            styled(
                "search ",
                (search_id, "bold"),
                f" created (resume with: swarmq resume {search_id})",
            )
        )
        _drive(runner, search_id, quiet)
        return
    _run_seeds(settings, cfg, chosen, label, with_baselines, top_k, quiet)


def _run_seeds(
    settings: Settings,
    cfg: Any,
    seeds: list[int],
    label: str | None,
    with_baselines: bool,
    top_k: int,
    quiet: bool,
) -> None:
    from swarmq.cli._output import print_wide, spread_table
    from swarmq.engine import group_members, seed_group_id, with_seed
    from swarmq.reporting import seed_summary

    runner = _runner(settings)
    db = runner.runtime.db
    group = seed_group_id(cfg, label)
    err_console.print(styled("seed group ", (group, "bold"), f": seeds {seeds}"))
    ids: list[str] = []
    for seed in seeds:
        member = group_members(db, group).get(seed)
        if member is None:
            search_id = runner.submit(with_seed(cfg, seed), group_id=group)
            err_console.print(styled(f"seed {seed}: search ", (search_id, "bold"), " created"))
        else:
            search_id = member.search_id
            err_console.print(
                styled(f"seed {seed}: search ", (search_id, "bold"), f" found ({member.status})")
            )
        if member is None or member.status != "completed":
            _drive(runner, search_id, quiet)
        status = group_members(db, group)[seed].status
        if status != "completed":
            raise SwarmqError(
                f"seed {seed}: search {search_id} is {status}; see swarmq status {search_id}, "
                "then run the same command again to continue the group"
            )
        if with_baselines:
            from swarmq.cli._report import run_baselines

            run_baselines(db, runner.runtime.store, search_id, top_k)
        ids.append(search_id)
    print_wide(spread_table(seed_summary(db, ids), seeds))


@main.command()
@click.argument("search_id")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--embedded", is_flag=True, help="Run the rest in this process even if a broker is set."
)
@click.pass_obj
def resume(settings: Settings, search_id: str, quiet: bool, embedded: bool) -> None:
    """Continue SEARCH from where the database says it stopped.

    With a broker configured, reopen it and send the work it needs to the workers, then return
    (follow it with `swarmq watch`); otherwise, or with --embedded, run it here to the end.
    """
    if settings.distributed and not embedded:
        from swarmq.execution import DistributedClient

        report = DistributedClient(settings).resume(search_id)
        err_console.print(
            styled(
                "search ",
                (search_id, "bold"),
                f" resumed: sent {len(report.work)} message(s) ({report.describe()}); "
                f"follow it with: swarmq watch {search_id}",
            )
        )
        return
    runner = _runner(settings)
    _drive(runner, search_id, quiet)


@main.command()
@click.argument("search_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(settings: Settings, search_id: str | None, as_json: bool) -> None:
    """Show all searches, or one search in detail."""
    from swarmq.engine import (
        best_history,
        final_report,
        search_activity,
        search_summary,
        utility_histories,
    )
    from swarmq.storage import Database

    db = Database(settings.database_url)
    db.check_schema(create=True)
    if search_id is None:
        print_searches(db, as_json)
        return
    s = search_summary(db, search_id)
    histories = utility_histories(db, search_id)
    report = final_report(db, search_id)
    activity = search_activity(db, search_id, settings.heartbeat_timeout)
    stranded = _stranded(settings, db, s.status, activity.counts.get("pending", 0))
    if as_json:
        out = _summary_dict(s) | {
            "best_history": best_history(db, search_id),
            "utility_histories": histories,
            "evaluations": activity.counts,
            "workers": activity.workers,
        }
        if stranded is not None:
            out["waiting_without_worker"] = stranded
        if report is not None:
            out["final"] = {
                "best_expert": vars(report.best_expert),
                "global_best": vars(report.global_best),
            }
        click.echo(json.dumps(out, indent=2))
        return
    print_table(summary_table([s]))
    if s.stop_reason:
        console.print(f"stopped: {s.stop_reason}", highlight=False)
    counts = ", ".join(f"{n} {state}" for state, n in sorted(activity.counts.items()))
    console.print(f"evaluations: {counts or 'none'}", highlight=False)
    if activity.workers:
        console.print(f"working on it: {', '.join(activity.workers)}", highlight=False)
    if stranded is not None:
        console.print(stranded, highlight=False)
    for i, h in enumerate(histories):
        console.print(f"particle {i:3d}: " + " ".join(fmt(u) for u in h[-12:]), highlight=False)
    if report is not None:
        console.print(final_table(report))


def _stranded(settings: Settings, db: Any, status: str, pending: int) -> str | None:
    """Why the waiting evaluations of a running search are not taken, when no live worker is
    on this search's database (workers on another database refuse its messages)."""
    if not settings.distributed or status != "running" or pending == 0:
        return None
    from swarmq.execution import DistributedClient

    workers = DistributedClient(settings).worker_databases()
    own = db.identity()
    if any(identity == own for identity in workers.values()):
        return None
    others = sorted(node for node, identity in workers.items() if identity != own)
    seen = (
        f"the live workers ({', '.join(others)}) are on other databases"
        if others
        else "no worker answered"
    )
    return (
        f"{pending} evaluation(s) waiting with no matching worker: {seen}; start one with "
        f"swarmq worker --db {db.describe()!r}"
    )


def print_searches(db: Any, as_json: bool) -> None:
    """Print every search of ``db``: a table, or a JSON list with ``as_json``."""
    from swarmq.engine import list_searches

    rows = list_searches(db)
    if as_json:
        click.echo(json.dumps([_summary_dict(r) for r in rows], indent=2))
    elif not rows:
        console.print(f"no searches in {db.describe()}", highlight=False)
    else:
        print_table(summary_table(rows))


def _summary_dict(s: Any) -> dict[str, Any]:
    d = dict(vars(s))
    d["created_at"] = s.created_at.isoformat()
    d["finished_at"] = None if s.finished_at is None else s.finished_at.isoformat()
    return d


@main.command()
@click.option(
    "--cache",
    "cache_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the demo's model, experts and data are built (default: ~/.cache/swarmq/demo).",
)
@click.option("--rebuild", is_flag=True, help="Build the demo assets again even if cached.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_obj
def demo(settings: Settings, cache_dir: Path | None, rebuild: bool, quiet: bool) -> None:
    """Build a tiny offline model, four experts and a new task, then run a swarm on it."""
    from swarmq.config import load_config
    from swarmq.demo import build_demo_assets, default_cache_dir

    root = cache_dir or default_cache_dir()
    assets = build_demo_assets(
        root, progress=lambda msg: err_console.print(styled((msg, "dim"))), force=rebuild
    )
    cfg = load_config(assets.config_path)
    runner = _runner(settings)
    search_id = runner.submit(cfg)
    err_console.print(styled("demo search ", (search_id, "bold"), " created"))
    _drive(runner, search_id, quiet)


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_obj
def db_upgrade(settings: Settings, revision: str) -> None:
    """Create or upgrade the database schema."""
    from swarmq.storage import Database

    database = Database(settings.database_url)
    database.upgrade(revision)
    console.print(
        f"{database.describe()} is at revision {database.current_revision()}", highlight=False
    )
