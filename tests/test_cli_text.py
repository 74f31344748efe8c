"""What the command line shows is what was given: user strings are text, never rich markup.

Names, ids, error messages, dataset strings and the audit's mismatch text hold brackets as
often as not (``x[/]y``, ``[bold red]boom``, ``[r_v, r_p, r_g, r_w]``); printed as markup they
were styled away or raised, leaving a search stuck in "running". Searches here run on the
engine with a closed-form utility (no model) unless a command needs one.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from searches import closed_form, distance_utility, make_pool
from sqlalchemy.orm.attributes import flag_modified

from swarmq.cli import main
from swarmq.engine import create_search, list_searches
from swarmq.execution import EmbeddedRunner
from swarmq.settings import Settings
from swarmq.storage import Database, ParticleStateRow

HOSTILE = ["x[/]y", "[bold red]boom", "a [link=file:///etc]b[/link]", "tail\\"]


def _cli(root: Path, *args: str, columns: int | None = None) -> Any:
    env = {"COLUMNS": str(columns)} if columns else {}
    return CliRunner(env=env).invoke(
        main, ["--db", f"sqlite:///{root / 'db.sqlite'}", "--artifacts", str(root / "art"), *args]
    )


@pytest.fixture(scope="module")
def hostile_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A database with one completed search per hostile name: (folder, search ids)."""
    root = tmp_path_factory.mktemp("hostile")
    pool = make_pool(root / "pool")
    runner = EmbeddedRunner(
        Settings(f"sqlite:///{root / 'db.sqlite'}", root / "art"), evaluate=distance_utility
    )
    ids = []
    for name in HOSTILE:
        sid = create_search(
            runner.runtime, closed_form(pool, name=name, max_iterations=2), check_objective=False
        )
        runner.drive(sid)
        ids.append(sid)
    runner.runtime.db.engine.dispose()
    return root, ids


@pytest.mark.parametrize(
    "command", [["list"], ["status"], ["status", "{id}"], ["watch", "{id}", "--interval", "0.1"]]
)
def test_hostile_names_are_shown_as_given(
    hostile_db: tuple[Path, list[str]], command: list[str]
) -> None:
    root, ids = hostile_db
    for name, sid in zip(HOSTILE, ids, strict=True):
        # Wide enough for the names to stay on one line of their cell.
        result = _cli(root, *[a.replace("{id}", sid) for a in command], columns=200)
        assert result.exit_code == 0, (command, result.output)
        assert name in result.output, (command, result.output)


@pytest.mark.parametrize("bad_id", ["x[/]", "[bold red]boom", "[/]"])
def test_a_hostile_search_id_is_named_in_one_line(tmp_path: Path, bad_id: str) -> None:
    assert _cli(tmp_path, "db", "upgrade").exit_code == 0
    for command in (["status", bad_id], ["watch", bad_id], ["cancel", bad_id]):
        result = _cli(tmp_path, *command)
        assert result.exit_code == 2, (command, result.output)
        assert f"error: search {bad_id!r} does not exist" in result.output, result.output
        assert "Traceback" not in result.output


def test_a_run_of_a_hostile_name_completes_and_prints_it(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    config = write_config(search={"name": "x[/]y", "particles": 4, "max_iterations": 1})
    result = _cli(tmp_path, "run", str(config))
    assert result.exit_code == 0, result.output
    assert "x[/]y: 2/2 iterations applied" in result.output  # the plain progress lines
    (row,) = list_searches(Database(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    assert row.status == "completed" and row.name == "x[/]y"
    assert f"search {row.id} completed" in result.output


def test_the_audit_mismatch_keeps_its_brackets(hostile_db: tuple[Path, list[str]]) -> None:
    root, ids = hostile_db
    db = Database(f"sqlite:///{root / 'db.sqlite'}")
    with db.session() as s:
        row = s.get(ParticleStateRow, (ids[0], 1, 1))
        assert row is not None and row.update is not None
        saved = list(row.update["factors"])
        row.update["factors"][0] += 0.125
        flag_modified(row, "update")
    try:
        result = _cli(root, "audit", ids[0], "--quiet")
        assert result.exit_code == 1, result.output
        text = " ".join(result.output.split())
        assert "iteration 1, particle 1, factors [r_v, r_p, r_g, r_w]: expected [" in text, text
    finally:
        with db.session() as s:
            row = s.get(ParticleStateRow, (ids[0], 1, 1))
            assert row is not None and row.update is not None
            row.update["factors"] = saved
            flag_modified(row, "update")


# --- nothing a user must copy is cut ----------------------------------------------------------


def test_ids_are_whole_in_an_80_column_window_or_a_pipe(
    hostile_db: tuple[Path, list[str]],
) -> None:
    root, ids = hostile_db
    for command in (["list"], ["status"], *[["status", sid] for sid in ids]):
        result = _cli(root, *command, columns=80)
        assert result.exit_code == 0, result.output
        assert "…" not in result.output, result.output
        for sid in ids if len(command) == 1 else command[1:]:
            assert sid in result.output, (command, result.output)
    listed = _cli(root, "list", "--json", columns=80)
    assert sorted(s["id"] for s in json.loads(listed.output)) == sorted(ids)


def test_settings_show_urls_and_paths_whole(tmp_path: Path) -> None:
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "swarmq.db"
    broker = "redis://:secret-pw@broker.internal.example.org:6379/11?socket_timeout=30"
    result = CliRunner(env={"COLUMNS": "80"}).invoke(
        main, ["--db", f"sqlite:///{deep}", "--broker", broker, "settings"]
    )
    assert result.exit_code == 0, result.output
    assert f"sqlite:///{deep}" in result.output, result.output
    assert "redis://:***@broker.internal.example.org:6379/11?socket_timeout=30" in result.output
    assert "…" not in result.output and "secret-pw" not in result.output
    as_json = CliRunner().invoke(
        main, ["--db", f"sqlite:///{deep}", "--broker", broker, "settings", "--json"]
    )
    shown = json.loads(as_json.output)
    assert shown["database_url"] == {"value": f"sqlite:///{deep}", "from": "option"}
    assert shown["broker_url"]["value"].startswith("redis://:***@broker.internal")


# --- watch into a pipe or a log -------------------------------------------------------------


def test_watch_prints_a_line_per_change_into_a_pipe_and_stops_on_sigterm(tmp_path: Path) -> None:
    import os
    import select
    import signal
    import subprocess
    import sys

    pool = make_pool(tmp_path / "pool")
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    runner = EmbeddedRunner(Settings(db_url, tmp_path / "art"), evaluate=distance_utility)
    sid = create_search(
        runner.runtime, closed_form(pool, name="piped", max_iterations=3), check_objective=False
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARMQ_")}
    argv = [sys.executable, "-m", "swarmq", "--db", db_url, "--artifacts", str(tmp_path / "art")]

    def watch() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*argv, "watch", sid, "--interval", "0.1"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        if not ready:  # a live view writes nothing into a pipe until it ends
            proc.kill()
            pytest.fail("swarmq watch wrote nothing into a pipe within 60 s")
        first = proc.stdout.readline()  # the first state, at once, not at the end
        assert first.startswith(f"piped {sid}: running, iteration 0/3"), first
        return proc

    # Followed to the end: one line per change, the last one the finished search.
    proc = watch()
    runner.drive(sid)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) >= 2, out
    assert lines[-1].startswith(f"piped {sid}: completed, iteration 3/3"), out
    assert all(a != b for a, b in itertools.pairwise(lines))  # per change, not poll

    # SIGTERM: the last state is shown, exit status 0.
    sid = create_search(
        runner.runtime, closed_form(pool, name="piped", max_iterations=3), check_objective=False
    )
    proc = watch()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"stopped watching: piped {sid}: running" in out, out
    assert "Traceback" not in err, err


def test_submit_and_worker_follow_one_schema_rule_on_an_empty_database(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "pool")
    config = tmp_path / "search.json"
    config.write_text(closed_form(pool, name="s").to_json())
    yaml_config = tmp_path / "search.yaml"
    yaml_config.write_text(config.read_text())  # JSON is YAML
    db_url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    # No broker is reached: the schema is checked first.
    broker = "redis://127.0.0.1:1/0"
    for command in (["submit", str(yaml_config)], ["worker"]):
        result = CliRunner().invoke(main, ["--db", db_url, "--broker", broker, *command])
        assert result.exit_code == 2, (command, result.output)
        assert "schema revision none" in result.output and "swarmq db upgrade" in result.output
    from sqlalchemy import inspect

    assert inspect(Database(db_url).engine).get_table_names() == []  # nothing created


def test_rabbitmq_time_limit_above_consumer_timeout_is_warned(tmp_path: Path) -> None:
    db = ["--db", f"sqlite:///{tmp_path / 'db.sqlite'}"]
    amqp = ["--broker", "amqp://guest@127.0.0.1:1//"]
    warned = CliRunner().invoke(main, [*db, *amqp, "settings"])
    assert warned.exit_code == 0, warned.output
    text = " ".join(warned.output.split())
    assert "warning: time_limit = 3900 s is above RabbitMQ's consumer_timeout (1800 s" in text
    assert "raise the server's consumer_timeout above 3900000 ms" in text
    # Once the server's timeout is raised and said, or on Redis, no warning.
    raised = CliRunner(env={"SWARMQ_CONSUMER_TIMEOUT": "4500"}).invoke(
        main, [*db, *amqp, "settings"]
    )
    assert raised.exit_code == 0 and "warning" not in raised.output, raised.output
    redis = CliRunner().invoke(main, [*db, "--broker", "redis://127.0.0.1:1/0", "settings"])
    assert redis.exit_code == 0 and "warning" not in redis.output, redis.output
