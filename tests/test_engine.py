"""The engine over the real databases, with a cheap closed-form utility instead of a model.

The utility is minus the squared distance to a hidden target, so the swarm has something to
find and every number can be checked against the rules of the algorithm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file
from searches import closed_form, distance_utility, make_pool
from sqlalchemy import select

from swarmq.config import SearchConfig
from swarmq.engine import (
    best_history,
    coordinate_iteration,
    create_search,
    run_evaluation,
    search_summary,
    utility_histories,
)
from swarmq.errors import ArtifactError, LayoutError, NotFoundError, NumericError, UtilityError
from swarmq.execution import EmbeddedRunner
from swarmq.settings import Settings
from swarmq.storage import EvaluationRow, IterationRow, ParticleStateRow


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pool(tmp_path_factory.mktemp("pool"))


def config(pool: Path, **swarm: Any) -> SearchConfig:
    search = {k: swarm.pop(k) for k in ("seed", "particles", "max_iterations") if k in swarm}
    return closed_form(pool, swarm=swarm, **search)


def run(url: str, artifacts: Path, cfg: SearchConfig) -> tuple[EmbeddedRunner, str]:
    runner = EmbeddedRunner(Settings(url, artifacts), evaluate=distance_utility)
    sid = create_search(runner.runtime, cfg, check_objective=False)
    runner.drive(sid)
    return runner, sid


def test_search_follows_the_rules(url: str, tmp_path: Path, pool: Path) -> None:
    runner, sid = run(url, tmp_path / "art", config(pool))
    db = runner.runtime.db
    summary = search_summary(db, sid)
    assert summary.status == "completed" and summary.stop_reason
    hist = utility_histories(db, sid)
    assert len(hist) == 7 and all(len(h) == summary.iteration + 1 for h in hist)
    # Global best after each iteration = running maximum of everything evaluated so far.
    flat_max = np.maximum.accumulate(
        [max(h[t] for h in hist) for t in range(summary.iteration + 1)]
    )
    assert best_history(db, sid) == pytest.approx(list(flat_max))
    with db.session() as s:
        states = s.scalars(select(ParticleStateRow).where(ParticleStateRow.search_id == sid)).all()
        for st in states:  # personal best = running maximum of the particle's own utilities
            assert st.best_utility == pytest.approx(max(hist[st.particle][: st.iteration + 1]))
        tests = s.scalars(
            select(EvaluationRow).where(
                EvaluationRow.search_id == sid, EvaluationRow.split == "test"
            )
        ).all()
        assert tests and all(e.status == "done" for e in tests)
        steps = [
            it.step_length
            for it in s.scalars(
                select(IterationRow)
                .where(IterationRow.search_id == sid)
                .order_by(IterationRow.number)
            )
        ]
    assert steps[0] is None and steps[1] == 1.0 and steps[2] == pytest.approx(0.95)
    # The swarm improves on the best expert for this smooth objective.
    assert best_history(db, sid)[-1] > max(h[0] for h in hist[:4])


def test_same_seed_same_history_on_both_backends(
    tmp_path: Path, pool: Path, postgres_url: str
) -> None:
    r1, s1 = run(f"sqlite:///{tmp_path / 'a.sqlite'}", tmp_path / "a", config(pool))
    r2, s2 = run(postgres_url, tmp_path / "b", config(pool))
    r3, s3 = run(f"sqlite:///{tmp_path / 'c.sqlite'}", tmp_path / "c", config(pool, seed=5))
    h1 = utility_histories(r1.runtime.db, s1)
    assert h1 == utility_histories(r2.runtime.db, s2)
    assert h1 != utility_histories(r3.runtime.db, s3)


def test_duplicate_messages_are_no_ops(tmp_path: Path, pool: Path) -> None:
    runner = EmbeddedRunner(
        Settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art"), evaluate=distance_utility
    )
    rt = runner.runtime
    sid = create_search(rt, config(pool), check_objective=False)
    for p in range(7):
        assert run_evaluation(rt, sid, 0, p).status == "done"
        assert run_evaluation(rt, sid, 0, p).status == "duplicate"
    # The last evaluation asked for exactly one coordination.
    assert [m for m in runner.queue.messages if m[0] == "swarmq.coordinate"] == [
        ("swarmq.coordinate", {"search_id": sid, "iteration": 0})
    ]
    assert coordinate_iteration(rt, sid, 0).status == "applied"
    assert coordinate_iteration(rt, sid, 0).status == "already"
    assert coordinate_iteration(rt, sid, 1).status == "incomplete"
    with rt.db.session() as s:
        assert len(s.scalars(select(IterationRow).where(IterationRow.search_id == sid)).all()) == 2


def test_dropout_skips_but_still_moves(tmp_path: Path, pool: Path) -> None:
    runner, sid = run(
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        tmp_path / "art",
        config(pool, dropout_n=0.5, max_iterations=6, patience=10),
    )
    with runner.runtime.db.session() as s:
        skipped = s.scalars(
            select(EvaluationRow).where(
                EvaluationRow.search_id == sid, EvaluationRow.status == "skipped"
            )
        ).all()
        assert skipped
        for ev in skipped:
            prev = s.get(ParticleStateRow, (sid, ev.iteration - 1, ev.particle))
            cur = s.get(ParticleStateRow, (sid, ev.iteration, ev.particle))
            assert cur is not None and prev is not None
            assert cur.utility == prev.utility and cur.evaluated is False
            assert cur.position_hash != prev.position_hash  # it moved


def test_best_starting_velocity(tmp_path: Path, pool: Path) -> None:
    runner, sid = run(
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        tmp_path / "art",
        config(pool, initial_velocity="best", max_iterations=2),
    )
    rt = runner.runtime
    with rt.db.session() as s:
        it0 = s.get(IterationRow, (sid, 0))
        st = s.get(ParticleStateRow, (sid, 0, 3))
        assert (
            it0 is not None
            and st is not None
            and st.velocity_hash is not None
            and it0.best_hash is not None
        )
        g, x, v = (
            rt.store.get_vector(h) for h in (it0.best_hash, st.position_hash, st.velocity_hash)
        )
    np.testing.assert_array_equal(v, g - x)


def test_nan_utility_fails_the_search_with_the_reason(tmp_path: Path, pool: Path) -> None:
    def nan_utility(*_args: Any) -> tuple[float, dict[str, Any]]:
        return float("nan"), {}

    runner = EmbeddedRunner(
        Settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art"), evaluate=nan_utility
    )
    sid = create_search(runner.runtime, config(pool), check_objective=False)
    with pytest.raises(UtilityError, match="finite"):
        runner.drive(sid)
    s = search_summary(runner.runtime.db, sid)
    assert s.status == "failed" and "nan" in (s.stop_reason or "")
    with runner.runtime.db.session() as sess:
        ev = sess.scalars(
            select(EvaluationRow).where(
                EvaluationRow.search_id == sid, EvaluationRow.status == "failed"
            )
        ).one()
        assert "finite" in (ev.error or "") and ev.attempts == 1


@pytest.mark.parametrize(
    ("metrics", "why"),
    [({"tags": {"a", "b"}}, "not JSON serializable"), ({"loss": float("nan")}, "Out of range")],
    ids=["set", "nan"],
)
def test_metrics_that_cannot_be_stored_fail_the_search_before_the_write(
    url: str, tmp_path: Path, pool: Path, metrics: dict[str, Any], why: str
) -> None:
    # SQLite's JSON would store NaN and PostgreSQL's would refuse it mid-commit, leaving the
    # evaluation running: both refuse it the same way, before anything is written.
    def bad_metrics(*args: Any) -> tuple[float, dict[str, Any]]:
        return distance_utility(*args)[0], metrics

    runner = EmbeddedRunner(Settings(url, tmp_path / "art"), evaluate=bad_metrics)
    sid = create_search(runner.runtime, config(pool), check_objective=False)
    with pytest.raises(UtilityError, match=f"metrics that cannot be stored as JSON.*{why}"):
        runner.drive(sid)
    summary = search_summary(runner.runtime.db, sid)
    assert summary.status == "failed" and "stored as JSON" in (summary.stop_reason or "")
    with runner.runtime.db.session() as s:
        statuses = s.scalars(
            select(EvaluationRow.status).where(EvaluationRow.search_id == sid)
        ).all()
    assert "running" not in statuses and statuses.count("failed") == 1


def test_corrupted_artifact_is_named(tmp_path: Path, pool: Path) -> None:
    runner = EmbeddedRunner(
        Settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art"), evaluate=distance_utility
    )
    sid = create_search(runner.runtime, config(pool), check_objective=False)
    with runner.runtime.db.session() as s:
        digest = s.get(ParticleStateRow, (sid, 0, 2)).position_hash  # type: ignore[union-attr]
    path = tmp_path / "art" / digest[:2] / f"{digest}.safetensors"
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ArtifactError, match=f"{digest}.*corrupted"):
        runner.drive(sid)
    assert search_summary(runner.runtime.db, sid).status == "failed"


def test_mismatched_experts_are_refused(tmp_path: Path, pool: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in sorted(pool.glob("*.safetensors"))[:2]:
        (bad / f.name).write_bytes(f.read_bytes())
    save_file(
        {"a.weight": np.zeros(6, np.float32), "b.weight": np.zeros((4, 3), np.float32)},
        str(bad / "e9.safetensors"),
    )
    runner = EmbeddedRunner(Settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art"))
    with pytest.raises(LayoutError, match=r"b\.weight"):
        create_search(runner.runtime, config(bad, particles=3), check_objective=False)
    assert (
        runner.runtime.db.engine.connect().exec_driver_sql("select count(*) from searches").scalar()
        == 0
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -3e38], ids=["nan", "inf", "3e38"])
def test_non_finite_or_overflowing_expert_weights_are_refused(
    tmp_path: Path, pool: Path, value: float
) -> None:
    # 3e38 is finite but overflows float32 in the first update; all three would make every
    # position NaN after one iteration, and every utility of the search meaningless.
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in sorted(pool.glob("*.safetensors")):
        (bad / f.name).write_bytes(f.read_bytes())
    b = np.zeros((3, 4), np.float32)
    b[1, 2] = value
    save_file({"a.weight": np.ones(6, np.float32), "b.weight": b}, str(bad / "e2.safetensors"))
    runner = EmbeddedRunner(Settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art"))
    with pytest.raises(LayoutError, match=r"tensor 'b\.weight' of expert 'e2'.*index \[1, 2\]"):
        create_search(runner.runtime, config(bad), check_objective=False)
    assert (
        runner.runtime.db.engine.connect().exec_driver_sql("select count(*) from searches").scalar()
        == 0
    )


def test_an_overflowing_update_fails_the_search_naming_particle_and_iteration(
    tmp_path: Path, pool: Path
) -> None:
    # A step length finite in the file (a double) but beyond float32 overflows the first update.
    runner = EmbeddedRunner(
        Settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art"), evaluate=distance_utility
    )
    sid = create_search(runner.runtime, config(pool, step_length=1e39), check_objective=False)
    with pytest.raises(NumericError, match="particle 0 producing iteration 1"):
        runner.drive(sid)
    s = search_summary(runner.runtime.db, sid)
    assert s.status == "failed" and s.iteration == 0
    assert "particle 0 producing iteration 1 gave a non-finite position" in (s.stop_reason or "")
    with runner.runtime.db.session() as sess:  # nothing of iteration 1 was recorded
        assert sess.get(IterationRow, (sid, 1)) is None


def test_restarts_replay_the_reference_rule(tmp_path: Path, pool: Path) -> None:
    # The reference code restarts particle i before the update producing t when
    # len(history) - (first index of its best) >= restart_patience * patience, its history
    # holding the utilities of iterations 0..t-1. Replayed over the recorded histories, every
    # recorded restart decision must be that one (threshold 2: restarts happen often).
    cfg = config(pool, patience=4, restart_patience=0.5, max_iterations=10)
    runner, sid = run(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art", cfg)
    db = runner.runtime.db
    histories = utility_histories(db, sid)
    with db.session() as s:
        recorded = {
            (st.iteration, st.particle): st.restarted
            for st in s.scalars(select(ParticleStateRow).where(ParticleStateRow.search_id == sid))
        }
    expected = {}
    for t, i in recorded:
        if t == 0:
            expected[(t, i)] = False
            continue
        history = [float(u) for u in histories[i][:t]]
        expected[(t, i)] = len(history) - history.index(max(history)) >= 0.5 * 4
    assert recorded == expected
    # The boundary case happens: a particle restarted exactly 2 iterations after its best.
    assert any(
        restarted and t - [float(u) for u in histories[i][:t]].index(max(histories[i][:t])) == 2
        for (t, i), restarted in recorded.items()
        if t > 0
    )


SLOW_DRIVE = """
import sys, time
from searches import distance_utility
from swarmq.execution import EmbeddedRunner
from swarmq.settings import Settings

def slow(*args):
    print("evaluating", flush=True)
    time.sleep(0.5)
    return distance_utility(*args)

url, artifacts, sid = sys.argv[1:]
EmbeddedRunner(Settings(url, artifacts), evaluate=slow).drive(sid)
"""


def test_a_second_resume_of_a_running_search_is_refused(
    url: str, tmp_path: Path, pool: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from click.testing import CliRunner

    from swarmq.cli import main

    runner = EmbeddedRunner(Settings(url, tmp_path / "art"), evaluate=distance_utility)
    sid = create_search(runner.runtime, config(pool), check_objective=False)
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parent)}
    first = subprocess.Popen(
        [sys.executable, "-c", SLOW_DRIVE, url, str(tmp_path / "art"), sid],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert first.stdout is not None and first.stdout.readline() == "evaluating\n"
        args = ["--db", url, "--artifacts", str(tmp_path / "art"), "resume", sid, "--quiet"]
        second = CliRunner().invoke(main, args)
        assert second.exit_code == 2, second.output
        assert f"search {sid} is being run elsewhere" in " ".join(second.output.split())
        assert "Traceback" not in second.output
        # The refused resume touched nothing: the first one's evaluation is still its own.
        with runner.runtime.db.session() as s:
            running = s.scalars(
                select(EvaluationRow).where(
                    EvaluationRow.search_id == sid, EvaluationRow.status == "running"
                )
            ).all()
        assert len(running) == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # A killed driver releases the search at once: resume finishes it.
    again = EmbeddedRunner(Settings(url, tmp_path / "art"), evaluate=distance_utility)
    again.drive(sid)
    assert search_summary(again.runtime.db, sid).status == "completed"


def test_unknown_search_is_named(tmp_path: Path) -> None:
    runner = EmbeddedRunner(Settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art"))
    with pytest.raises(NotFoundError, match="'nope' does not exist"):
        runner.drive("nope")


class _Recorder:
    """A dispatcher that keeps what it is asked to send, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def send_evaluation(self, search_id: str, iteration: int, particle: int, split: str) -> None:
        self.sent.append(("evaluate", iteration, particle, split))

    def send_coordination(self, search_id: str, iteration: int) -> None:
        self.sent.append(("coordinate", iteration))


def test_next_iteration_is_sent_longest_expected_first(
    url: str, tmp_path: Path, pool: Path
) -> None:
    from datetime import timedelta

    from swarmq.engine import Runtime
    from swarmq.storage import Database, LocalArtifactStore

    db = Database(url)
    db.upgrade()
    recorder = _Recorder()
    rt = Runtime(db=db, store=LocalArtifactStore(tmp_path / "art"), dispatcher=recorder)
    rt.evaluate = distance_utility
    cfg = config(pool, max_iterations=5)
    sid = create_search(rt, cfg, check_objective=False)
    n = cfg.search.particles
    assert n is not None and n >= 4
    # Seconds each particle's evaluations took: iteration 0, then iteration 1.
    first = [1.0, 5.0, 2.0, 4.0] + [3.0] * (n - 4)
    second = [8.0, 1.0, 2.0, 4.0] + [3.0] * (n - 4)

    def evaluate_all(iteration: int, seconds: list[float]) -> None:
        for p in range(n):
            run_evaluation(rt, sid, iteration, p)
        with db.session() as s:
            for ev in s.scalars(
                select(EvaluationRow).where(
                    EvaluationRow.search_id == sid, EvaluationRow.iteration == iteration
                )
            ):
                assert ev.started_at is not None
                ev.finished_at = ev.started_at + timedelta(seconds=seconds[ev.particle])

    evaluate_all(0, first)
    assert coordinate_iteration(rt, sid, 0).status == "applied"
    order = [m[2] for m in recorder.sent if m[0] == "evaluate" and m[1] == 1]
    assert order[:2] == [1, 3] and order[-1] == 0
    assert order == sorted(range(n), key=lambda p: (-first[p], p))

    # The mean of the recorded durations decides: particle 0 (1 s, then 8 s) now comes first.
    recorder.sent.clear()
    evaluate_all(1, second)
    assert coordinate_iteration(rt, sid, 1).status == "applied"
    order = [m[2] for m in recorder.sent if m[0] == "evaluate" and m[1] == 2]
    mean = [(a + b) / 2 for a, b in zip(first, second, strict=True)]
    assert order == sorted(range(n), key=lambda p: (-mean[p], p))
    assert order[0] == 0
    db.engine.dispose()
