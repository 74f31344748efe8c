"""Whole searches on a real (tiny) language model, through the CLI and real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from swarmq.cli import main


def cli(tmp_path: Path, *args: str, db: str = "db.sqlite") -> Any:
    result = CliRunner().invoke(
        main,
        ["--db", f"sqlite:///{tmp_path / db}", "--artifacts", str(tmp_path / "art"), *args],
        catch_exceptions=False,
    )
    return result


def status_json(tmp_path: Path, search_id: str, db: str = "db.sqlite") -> dict[str, Any]:
    result = cli(tmp_path, "status", search_id, "--json", db=db)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def search_id_of(tmp_path: Path, db: str) -> str:
    result = cli(tmp_path, "status", "--json", db=db)
    rows = json.loads(result.output)
    assert len(rows) == 1
    return str(rows[0]["id"])


def test_run_logs_a_line_per_iteration_when_not_on_a_terminal(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    # A live progress bar writes nothing to a log file until it stops: a run whose output is
    # not a terminal says each applied iteration on a line of its own instead.
    result = cli(tmp_path, "run", str(write_config()))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "iterations applied" in line]
    assert lines[0].startswith("tiny: 0/5 iterations applied, best -")
    applied = [int(line.split(": ")[1].split("/")[0]) for line in lines]
    assert applied == list(range(len(applied))) and applied[-1] >= 2
    quiet = cli(tmp_path, "run", str(write_config("again.toml")), "--quiet", db="q.sqlite")
    assert quiet.exit_code == 0 and "iterations applied" not in quiet.output


def test_run_status_export(
    tmp_path: Path, write_config: Callable[..., Path], tiny_world: dict[str, Path]
) -> None:
    config = write_config()
    result = cli(tmp_path, "run", str(config), "--quiet")
    assert result.exit_code == 0, result.output
    sid = search_id_of(tmp_path, "db.sqlite")
    st = status_json(tmp_path, sid)
    assert st["status"] == "completed"
    assert st["final"]["global_best"]["dev"] >= st["final"]["best_expert"]["dev"]
    assert (
        st["final"]["global_best"]["test"] is not None
        and st["final"]["best_expert"]["test"] is not None
    )
    assert len(st["utility_histories"]) == 6
    # Export loads onto the base model with peft.
    out = tmp_path / "best"
    result = cli(tmp_path, "export", sid, "--out", str(out))
    assert result.exit_code == 0, result.output
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_world["base"]), out)
    assert any("lora_A" in n for n, _ in model.named_parameters())

    # Evaluated again on the real model (same device, same dtype), the record agrees exactly.
    audit = cli(tmp_path, "audit", sid, "--reevaluate", "4", "--final", "--quiet")
    assert audit.exit_code == 0, audit.output
    # 4 dev evaluations, and the final table's 1 or 2 test ones (one when the global best is
    # the best initial expert).
    assert re.search(r"\b(5|6) evaluations run again", " ".join(audit.output.split()))
    # A test score of the final table changed in the record is found.
    from swarmq.storage import Database, EvaluationRow

    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with db.session() as s:
        ev = (
            s.query(EvaluationRow)
            .filter(EvaluationRow.search_id == sid, EvaluationRow.split == "test")
            .first()
        )
        assert ev is not None and ev.utility is not None
        ev.utility = ev.utility + 0.25
    db.engine.dispose()
    forged = cli(tmp_path, "audit", sid, "--final", "--quiet")
    assert forged.exit_code == 1, forged.output
    assert "test utility (evaluated again)" in " ".join(forged.output.split())


def test_two_runs_give_identical_histories(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    config = write_config()
    histories = []
    for db in ("a.sqlite", "b.sqlite"):
        assert cli(tmp_path, "run", str(config), "--quiet", db=db).exit_code == 0
        st = status_json(tmp_path, search_id_of(tmp_path, db), db=db)
        histories.append((st["utility_histories"], st["best_history"]))
    assert histories[0] == histories[1]
    # The search did something: utilities vary across particles and iterations.
    assert len({u for h in histories[0][0] for u in h}) > 1


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    config = write_config(search={"max_iterations": 6, "particles": 6}, swarm={"patience": 10})
    assert cli(tmp_path, "run", str(config), "--quiet", db="ref.sqlite").exit_code == 0
    reference = status_json(tmp_path, search_id_of(tmp_path, "ref.sqlite"), db="ref.sqlite")

    env = os.environ | {
        "SWARMQ_DATABASE_URL": f"sqlite:///{tmp_path / 'killed.sqlite'}",
        "SWARMQ_ARTIFACTS": str(tmp_path / "art"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarmq", "run", str(config), "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    killed_at = None
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            if not (tmp_path / "killed.sqlite").exists():
                continue
            try:
                rows = json.loads(
                    cli(tmp_path, "status", "--json", db="killed.sqlite").output or "[]"
                )
            except json.JSONDecodeError:
                continue
            # Kill mid-search: some evaluations of iteration 2 done, others not.
            if rows and rows[0]["iteration"] >= 2 and rows[0]["evaluations_done"] % 6 != 0:
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = rows[0]
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert killed_at is not None, "the run ended before it could be killed"
    sid = killed_at["id"]
    assert status_json(tmp_path, sid, db="killed.sqlite")["status"] == "running"

    result = cli(tmp_path, "resume", sid, "--quiet", db="killed.sqlite")
    assert result.exit_code == 0, result.output
    resumed = status_json(tmp_path, sid, db="killed.sqlite")
    assert resumed["status"] == "completed"
    assert resumed["utility_histories"] == reference["utility_histories"]
    assert resumed["best_history"] == reference["best_history"]
    for key in ("particle", "iteration", "dev", "test"):
        assert resumed["final"]["global_best"][key] == reference["final"]["global_best"][key]


def test_bad_inputs_get_one_clear_line(tmp_path: Path, write_config: Callable[..., Path]) -> None:
    cases = [
        (write_config("u.toml", objective={"utility": "telepathy"}), "telepathy"),
        (
            write_config("d.toml", objective={"dataset": str(tmp_path / "missing.json")}),
            "missing.json",
        ),
        (write_config("s.toml", swarm={"inertia": -2}), "swarm.inertia = -2"),
    ]
    for config, needle in cases:
        result = CliRunner().invoke(
            main, ["--db", f"sqlite:///{tmp_path / 'x.sqlite'}", "run", str(config)]
        )
        assert result.exit_code == 2, result.output
        assert needle in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(
        main, ["--db", f"sqlite:///{tmp_path / 'x.sqlite'}", "status", "nope"]
    )
    assert result.exit_code == 2 and "'nope' does not exist" in result.output
    assert (
        json.loads(
            CliRunner()
            .invoke(main, ["--db", f"sqlite:///{tmp_path / 'x.sqlite'}", "status", "--json"])
            .output
        )
        == []
    )


RAISING_UTILITY = """
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from swarmq.objectives import TextGenerator, Utility, UtilityResult


class Raises(Utility):
    example_keys: ClassVar[tuple[str, ...]] = ("question",)

    def score(
        self, generator: TextGenerator, examples: Sequence[Mapping[str, Any]]
    ) -> UtilityResult:
        raise ValueError("cannot parse the answers\\nsecond line of the message")
"""


def test_a_utility_that_raises_every_time_fails_the_search_in_one_line(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    plugin = tmp_path / "raising.py"
    plugin.write_text(RAISING_UTILITY, encoding="utf-8")
    config = write_config(objective={"utility": f"{plugin}:Raises"}, search={"particles": 4})
    # The plug-in generates nothing itself, so it takes no max_new_tokens.
    config.write_text(config.read_text().replace("max_new_tokens = 2\n", ""))
    result = cli(tmp_path, "run", str(config), "--quiet")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    expected = "ValueError: cannot parse the answers"
    assert "given up after 3 attempts (max_attempts = 3)" in result.output
    assert f"the last error was: {expected}" in result.output
    sid = search_id_of(tmp_path, "db.sqlite")
    status = status_json(tmp_path, sid)
    assert status["status"] == "failed" and expected in status["stop_reason"]
    from swarmq.storage import Database, EvaluationRow

    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with db.session() as s:
        rows = s.query(EvaluationRow).filter(EvaluationRow.search_id == sid).all()
        given_up = [r for r in rows if r.status == "failed"]
        assert len(given_up) == 1 and given_up[0].attempts == 3
        assert all(r.attempts <= 3 and r.status != "running" for r in rows)
        assert all(
            (r.error or expected).splitlines()[0].endswith(expected)
            or r.error.startswith("evaluation of particle")
            for r in rows
        )
    # resume is a person's decision to try again: the count starts over, the outcome is the same.
    again = cli(tmp_path, "resume", sid, "--quiet")
    assert again.exit_code == 2 and "Traceback" not in again.output
    assert f"the last error was: {expected}" in again.output
