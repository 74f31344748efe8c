"""The distributed mode's commands: workers, Flower, submit, list, watch, cancel, delete,
reconcile.

``resume`` and ``status`` (in ``_commands``) work in both modes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from swarmq.cli._commands import main, print_searches
from swarmq.cli._output import console, err_console, fmt, print_table, styled
from swarmq.errors import ConfigError
from swarmq.settings import SETTING_NAMES, Settings


def _database(settings: Settings) -> Any:
    from swarmq.storage import Database

    db = Database(settings.database_url)
    db.check_schema()
    return db


@main.command()
@click.option(
    "--gpus",
    help="GPU indices, e.g. 0,1: one worker process per GPU, each seeing only its GPU.",
)
@click.option(
    "--coordinator",
    is_flag=True,
    help="Run the coordinator queue and the reconciler (alone, unless --gpus/--concurrency).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help="Evaluation processes (CPU worker) or per GPU (default 1).",
)
@click.option(
    "--loglevel",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--evaluate",
    "evaluate_hook",
    envvar="SWARMQ_EVALUATE",
    hidden=True,
    help="module:function replacing the model evaluation (tests and benchmarks only).",
)
@click.pass_obj
def worker(
    settings: Settings,
    gpus: str | None,
    coordinator: bool,
    concurrency: int | None,
    loglevel: str,
    evaluate_hook: str | None,
) -> None:
    """Start this machine's Celery workers and keep them running until SIGTERM or Ctrl-C.

    Without options: one CPU evaluation worker. The first signal lets running evaluations
    finish; a second one stops at once (their messages are delivered again).
    """
    from swarmq.execution import parse_gpus, require_broker, supervise, worker_specs
    from swarmq.storage import redact_url

    broker = require_broker(settings)
    # Fail here, with the upgrade command, rather than in every pool process.
    _database(settings)
    specs = worker_specs(
        gpus=parse_gpus(gpus) if gpus else None, coordinator=coordinator, concurrency=concurrency
    )
    err_console.print(
        f"swarmq worker: broker {redact_url(broker)}, database "
        f"{redact_url(settings.database_url)}, artifacts {settings.artifacts}",
        highlight=False,
    )
    for warning in settings.warnings():
        err_console.print(styled(("warning:", "yellow"), f" {warning}"), soft_wrap=True)
    extra = {"SWARMQ_EVALUATE": evaluate_hook} if evaluate_hook else {}
    status = supervise(
        specs,
        settings,
        loglevel=loglevel,
        extra_env=extra,
        echo=lambda msg: err_console.print(msg),
    )
    sys.exit(status)


@main.command()
@click.option("--port", default=5555, show_default=True, type=int)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; 0.0.0.0 serves every network this machine is on.",
)
@click.option(
    "--basic-auth",
    envvar="FLOWER_BASIC_AUTH",
    help="user:password[,user2:password2] (or FLOWER_BASIC_AUTH), neither empty; required "
    "unless --no-auth. Every endpoint asks for it, /metrics and /healthcheck included.",
)
@click.option("--no-auth", is_flag=True, help="Serve without authentication (a closed network).")
@click.pass_obj
def flower(
    settings: Settings, port: int, address: str, basic_auth: str | None, no_auth: bool
) -> None:
    """Start Flower, the Celery monitor, on the configured broker, with basic auth."""
    from swarmq.execution import require_broker
    from swarmq.execution.flower import parse_basic_auth

    require_broker(settings)
    if basic_auth is not None and not no_auth:
        parse_basic_auth(basic_auth)  # an empty user or password is refused, not served
    elif not no_auth:
        raise ConfigError(
            "Flower shows every task's arguments and can shut workers down: give "
            "--basic-auth user:password (or FLOWER_BASIC_AUTH), or --no-auth on a closed network"
        )
    env = os.environ | settings.to_env()
    env.pop("FLOWER_BASIC_AUTH", None)
    if basic_auth and not no_auth:
        # Through the environment, not the command line, which every local user can read.
        env["FLOWER_BASIC_AUTH"] = basic_auth
    argv = [
        sys.executable,
        "-m",
        "swarmq.execution.flower",  # Flower with the credential check on every endpoint
        "-A",
        "swarmq.execution.worker",
        "flower",
        f"--port={port}",
        f"--address={address}",
    ]
    err_console.print(
        f"Flower on http://{address}:{port} ({'no auth' if no_auth else 'basic auth'})"
    )
    os.execvpe(argv[0], argv, env)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def submit(settings: Settings, config: Path) -> None:
    """Record the search in CONFIG, send its first evaluations to the workers, print its id."""
    from swarmq.config import load_config
    from swarmq.execution import DistributedClient

    cfg = load_config(config)
    search_id = DistributedClient(settings).submit(cfg)
    click.echo(search_id)
    err_console.print(
        styled(
            "search ", (search_id, "bold"), f" submitted; follow it with: swarmq watch {search_id}"
        )
    )


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_(settings: Settings, as_json: bool) -> None:
    """List the searches of the database."""
    print_searches(_database(settings), as_json)


@main.command()
@click.argument("search_id")
@click.pass_obj
def cancel(settings: Settings, search_id: str) -> None:
    """Cancel SEARCH: nothing new starts; running evaluations finish. Undo: swarmq resume."""
    from swarmq.engine import cancel_search

    before = cancel_search(_database(settings), search_id)
    note = " (it was already cancelled)" if before == "cancelled" else ""
    console.print(f"search {search_id} cancelled{note}", highlight=False)


@main.command()
@click.argument("search_id")
@click.option("--yes", is_flag=True, help="Delete without asking (scripts, no terminal).")
@click.pass_obj
def delete(settings: Settings, search_id: str, yes: bool) -> None:
    """Delete SEARCH from the database: every iteration, evaluation and baseline of it.

    A running search must be cancelled first. Artifact files are kept (other searches may
    share them). There is no undo.
    """
    from swarmq.engine import delete_search, search_summary

    db = _database(settings)
    s = search_summary(db, search_id)  # names an unknown id before asking anything
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError(
                f"delete search {search_id} without a terminal to confirm on: pass --yes"
            )
        click.confirm(
            f"delete search {s.id} ({s.name}, {s.status}, iteration {s.iteration}/"
            f"{s.max_iterations}) and all its records? there is no undo",
            abort=True,
            err=True,
        )
    counts = delete_search(db, search_id)
    rows = sum(counts.values())
    console.print(f"search {search_id} deleted ({rows} rows; artifact files kept)")


@main.command("reconcile")
@click.argument("search_id", required=False)
@click.pass_obj
def reconcile_command(settings: Settings, search_id: str | None) -> None:
    """Send again the work whose message was lost or whose worker stopped beating.

    The coordinator does this every reconcile_interval seconds; this is one pass by hand.
    """
    from swarmq.execution import DistributedClient

    report = DistributedClient(settings).reconcile(search_id)
    console.print(f"reconciled: {report.describe()}", highlight=False)
    for w in report.work:
        where = f" particle {w.particle} ({w.split})" if w.kind == "evaluate" else ""
        console.print(
            f"  {w.kind} search {w.search_id} iteration {w.iteration}{where}", highlight=False
        )


@main.command("settings")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def settings_command(settings: Settings, as_json: bool) -> None:
    """Show the resolved settings and where each came from (passwords hidden)."""
    from swarmq.storage import redact_url

    rows: dict[str, dict[str, str]] = {}
    for name in SETTING_NAMES:
        value = getattr(settings, name)
        # Every value, not only the *_url ones: a URL can stand in other settings too.
        shown = redact_url(str(value))
        if name == "visibility_timeout" and value is None:
            shown = f"{settings.effective_visibility_timeout:g} (time_limit + 600)"
        rows[name] = {"value": shown, "from": settings.sources.get(name, "default")}
    for warning in settings.warnings():
        err_console.print(styled(("warning:", "yellow"), f" {warning}"), soft_wrap=True)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="settings")
    table.add_column("setting", no_wrap=True)
    table.add_column("value", no_wrap=True)  # URLs and paths whole, to be copied
    table.add_column("from", overflow="fold")
    for name, row in rows.items():
        table.add_row(name, row["value"], row["from"])
    print_table(table)


# --- watch ------------------------------------------------------------------------------------


def _watch_view(db: Any, settings: Settings, search_id: str, started: float) -> Group:
    from swarmq.engine import busy_workers, search_activity, search_summary

    s = search_summary(db, search_id)
    act = search_activity(db, search_id, settings.heartbeat_timeout)
    busy = busy_workers(db, settings.heartbeat_timeout)
    best = (
        "-"
        if s.best_utility is None
        else f"{s.best_utility:.4f} (particle {s.best_particle}, iteration {s.best_iteration})"
    )
    head = styled(
        (s.name, "bold"),
        f" {s.id}  ",
        (s.status, "cyan"),
        f"  iteration {s.iteration}/{s.max_iterations}  best {best}\n"
        f"evaluations {s.evaluations_done}/{s.evaluations_total}  "
        f"workers busy {busy} ({len(act.workers)} on this search)  "
        f"watching {time.monotonic() - started:.0f}s",
    )
    table = Table(title=f"iteration {act.iteration}", expand=False)
    for col, justify in (
        ("particle", "right"),
        ("state", "left"),
        ("utility", "right"),
        ("personal best", "right"),
        ("attempts", "right"),
        ("worker", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for p in act.particles:
        state = p.status
        if p.running_for is not None:
            state += f" {p.running_for:.0f}s"
        table.add_row(
            str(p.particle),
            state,
            fmt(p.utility),
            fmt(p.best_utility),
            str(p.attempts),
            p.worker or "",
        )
    parts: list[Any] = [head, table]
    if s.stop_reason:
        parts.append(Text(f"stopped: {s.stop_reason}"))
    return Group(*parts)


def _finished(db: Any, search_id: str) -> bool:
    from swarmq.engine import search_activity, search_summary

    s = search_summary(db, search_id)
    if s.status == "running":
        return False
    # A completed search still has its final test evaluations to run.
    counts = search_activity(db, search_id, 0).counts
    return s.status != "completed" or not (counts.get("pending") or counts.get("running"))


def _watch_line(db: Any, settings: Settings, search_id: str) -> str:
    """The state of a search on one line: what a log of ``swarmq watch`` shows per change."""
    from swarmq.engine import search_activity, search_summary

    s = search_summary(db, search_id)
    act = search_activity(db, search_id, settings.heartbeat_timeout)
    counts = ", ".join(f"{n} {state}" for state, n in sorted(act.counts.items()))
    best = "-" if s.best_utility is None else f"{s.best_utility:.4f} (particle {s.best_particle})"
    line = (
        f"{s.name} {s.id}: {s.status}, iteration {s.iteration}/{s.max_iterations}, best {best}, "
        f"evaluations {s.evaluations_done}/{s.evaluations_total} ({counts or 'none'}), "
        f"{len(act.workers)} worker(s) on it"
    )
    return line + (f"; stopped: {s.stop_reason}" if s.stop_reason else "")


class _Stop:
    """SIGTERM while watching: noted by the handler, acted on between two polls (raising from
    the handler could interrupt a database call half-way)."""

    requested = False

    @classmethod
    def handler(cls, *_: Any) -> None:
        cls.requested = True


@main.command()
@click.argument("search_id")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(min=0.1))
@click.pass_obj
def watch(settings: Settings, search_id: str, interval: float) -> None:
    """Follow SEARCH live: iteration, per-particle utilities, best, busy workers (Ctrl-C stops).

    Where the output is not a terminal (a pipe, a log), one line per change instead; Ctrl-C or
    SIGTERM ends it with the last state shown.
    """
    import signal

    db = _database(settings)
    started = time.monotonic()
    _Stop.requested = False
    previous = signal.signal(signal.SIGTERM, _Stop.handler)
    try:
        if console.is_terminal:
            _watch_live(db, settings, search_id, interval, started)
        else:
            _watch_lines(db, settings, search_id, interval)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _watch_live(
    db: Any, settings: Settings, search_id: str, interval: float, started: float
) -> None:
    try:
        with Live(
            _watch_view(db, settings, search_id, started),
            console=console,
            refresh_per_second=4,
            auto_refresh=False,
        ) as live:
            try:
                while not _finished(db, search_id) and not _Stop.requested:
                    time.sleep(interval)
                    live.update(_watch_view(db, settings, search_id, started), refresh=True)
            finally:
                live.update(_watch_view(db, settings, search_id, started), refresh=True)
    except KeyboardInterrupt:
        pass


def _watch_lines(db: Any, settings: Settings, search_id: str, interval: float) -> None:
    # A live view writes nothing to a pipe until it stops (and nothing at all on SIGTERM):
    # a line per change is what a log can use. flush: the reader may be another process.
    shown = ""
    try:
        while True:
            # Finished first, then the line: the last line printed is the finished state.
            finished = _finished(db, search_id)
            line = _watch_line(db, settings, search_id)
            if line != shown:
                console.print(line, soft_wrap=True)
                console.file.flush()
                shown = line
            if finished:
                return
            time.sleep(interval)
            if _Stop.requested:
                break
    except KeyboardInterrupt:
        pass
    console.print(f"stopped watching: {_watch_line(db, settings, search_id)}", soft_wrap=True)
