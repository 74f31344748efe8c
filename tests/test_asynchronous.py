"""The asynchronous swarm (``[swarm] mode = "asynchronous"``) over the real databases.

The closed-form utility of tests/searches.py stands in for a model. The embedded queue runs
messages in the order they are sent; :class:`ShuffledQueue` runs them in a seeded random
order instead, as busy workers would, so particles drift apart and the order of applications
differs from a round robin.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fault_hooks import FAULTS_ENV, arm, fired
from searches import closed_form, distance_utility, make_pool
from sqlalchemy import select, update

from swarmq.config import SearchConfig, parse_config
from swarmq.engine import (
    create_search,
    final_report,
    personal_best_position,
    run_evaluation,
    search_summary,
)
from swarmq.engine._asynchronous import apply_pending
from swarmq.errors import ConfigError, StorageError
from swarmq.execution import EmbeddedRunner
from swarmq.execution._embedded import LocalQueue
from swarmq.reporting import audit_search
from swarmq.settings import Settings
from swarmq.storage import ApplicationRow, EvaluationRow, ParticleStateRow, SearchRow
from swarmq.swarm import SwarmParams, asynchronous_stop, evaluation_budget, should_stop

TESTS = Path(__file__).parent


class ShuffledQueue(LocalQueue):
    """Each message is inserted at a seeded random place among those waiting."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.rng = np.random.default_rng(seed)

    def _place(self) -> None:
        message = self.messages.pop()
        self.messages.insert(int(self.rng.integers(0, len(self.messages) + 1)), message)

    def send_evaluation(self, search_id: str, iteration: int, particle: int, split: str) -> None:
        super().send_evaluation(search_id, iteration, particle, split)
        self._place()


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pool(tmp_path_factory.mktemp("pool"))


def config(pool: Path, **swarm: Any) -> SearchConfig:
    search = {k: swarm.pop(k) for k in ("seed", "particles", "max_iterations") if k in swarm}
    return closed_form(pool, swarm={"mode": "asynchronous"} | swarm, **search)


def runner(url: str, artifacts: Path, shuffle: int | None = None) -> EmbeddedRunner:
    r = EmbeddedRunner(Settings(url, artifacts), evaluate=distance_utility)
    if shuffle is not None:
        r.queue = ShuffledQueue(shuffle)
        r.runtime.dispatcher = r.queue
    return r


def run(
    url: str, artifacts: Path, cfg: SearchConfig, shuffle: int | None = 0
) -> tuple[EmbeddedRunner, str]:
    r = runner(url, artifacts, shuffle)
    sid = create_search(r.runtime, cfg, check_objective=False)
    r.drive(sid)
    return r, sid


def applications(r: EmbeddedRunner, sid: str) -> list[ApplicationRow]:
    with r.runtime.db.session() as s:
        rows = list(
            s.scalars(
                select(ApplicationRow)
                .where(ApplicationRow.search_id == sid)
                .order_by(ApplicationRow.seq)
            )
        )
        s.expunge_all()
    return rows


def dev_evaluations(r: EmbeddedRunner, sid: str) -> list[EvaluationRow]:
    with r.runtime.db.session() as s:
        rows = list(
            s.scalars(
                select(EvaluationRow).where(
                    EvaluationRow.search_id == sid, EvaluationRow.split == "dev"
                )
            )
        )
        s.expunge_all()
    return rows


def audited(r: EmbeddedRunner, sid: str) -> None:
    result = audit_search(r.runtime.db, r.runtime.store, sid, check_experts=True)
    assert result.ok, [str(m) for m in result.mismatches]
    assert result.updates > 0


def test_unknown_mode_and_barrier_options_are_refused(pool: Path) -> None:
    with pytest.raises(ConfigError, match=r"swarm.mode = 'async'.*'synchronous' or 'asynchronous'"):
        closed_form(pool, swarm={"mode": "async"})
    with pytest.raises(ConfigError, match=r"dropout_n = 0.2 needs the iteration barrier"):
        config(pool, dropout_n=0.2)
    with pytest.raises(ConfigError, match=r"initial_velocity = 'best'"):
        config(pool, initial_velocity="best")
    assert closed_form(pool).swarm.mode == "synchronous"  # the paper's algorithm by default


def test_audit_recomputes_an_asynchronous_search(url: str, tmp_path: Path, pool: Path) -> None:
    r, sid = run(url, tmp_path / "art", config(pool, restart_patience=0.25))
    summary = search_summary(r.runtime.db, sid)
    assert summary.status == "completed"
    apps = applications(r, sid)
    assert [a.seq for a in apps] == list(range(len(apps)))
    # The particles drifted apart: some particle was applied at an iteration while another
    # had not reached the one before (impossible with a barrier).
    lag = max(
        a.iteration - min(b.iteration for b in apps[: k + 1] if b.particle == p)
        for k, a in enumerate(apps)
        for p in {b.particle for b in apps[: k + 1]}
    )
    assert lag >= 2
    # Every update read the global best and worst as they stood at its application.
    with r.runtime.db.session() as s:
        states = s.scalars(
            select(ParticleStateRow).where(
                ParticleStateRow.search_id == sid, ParticleStateRow.iteration > 0
            )
        ).all()
        by_seq = {a.seq: a for a in apps}
        for st in states:
            assert st.update is not None
            a = by_seq[st.update["application"]]
            assert (a.particle, a.iteration + 1) == (st.particle, st.iteration)
            assert (st.update["g"], st.update["g_worst"]) == (a.best_hash, a.worst_hash)
        assert any(st.restarted for st in states), "the search should exercise restarts"
    # The global best is the first strict maximum in application order, and the report's.
    best = max(apps, key=lambda a: (a.utility, -a.seq))
    assert (apps[-1].best_particle, apps[-1].best_iteration) == (best.particle, best.iteration)
    report = final_report(r.runtime.db, sid)
    assert report is not None and report.global_best.dev == best.utility
    assert report.global_best.test is not None and report.best_expert.test is not None
    # A particle's personal best is read at its own newest iteration (export --particle).
    for p in range(7):
        own = [a for a in apps if a.particle == p]
        top = max(own, key=lambda a: (a.utility, -a.iteration))
        _, vector, _, info = personal_best_position(r.runtime.db, r.runtime.store, sid, p)
        assert info["swarmq_iteration"] == str(top.iteration)
        assert float(info["swarmq_utility"]) == top.utility
        assert distance_utility(None, None, None, vector, "dev")[0] == top.utility
    audited(r, sid)


def test_audit_names_a_reordered_or_tampered_application(tmp_path: Path, pool: Path) -> None:
    r, sid = run(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art", config(pool))
    apps = applications(r, sid)
    # Two applications of different particles whose order mattered: swapping them changes
    # the global record one of them saw.
    k = next(
        k
        for k in range(len(apps) - 1)
        if apps[k].particle != apps[k + 1].particle
        and apps[k + 1].moved
        and apps[k].moved
        and apps[k].best_hash != apps[k + 1].best_hash
    )
    with r.runtime.db.session() as s:
        a, b = apps[k], apps[k + 1]
        for row, seq in ((a, -1), (b, a.seq), (a, b.seq)):
            s.execute(
                update(ApplicationRow)
                .where(
                    ApplicationRow.search_id == sid,
                    ApplicationRow.iteration == row.iteration,
                    ApplicationRow.particle == row.particle,
                )
                .values(seq=seq)
            )
            s.flush()
    result = audit_search(r.runtime.db, r.runtime.store, sid)
    assert not result.ok
    assert f"application {a.seq}" in str(result.mismatches[0]) or "update" in str(
        result.mismatches[0]
    )
    r2, sid2 = run(f"sqlite:///{tmp_path / 'db2.sqlite'}", tmp_path / "art2", config(pool))
    with r2.runtime.db.session() as s:
        s.execute(
            update(ApplicationRow)
            .where(ApplicationRow.search_id == sid2, ApplicationRow.seq == 3)
            .values(stop_reason="made up")
        )
    result = audit_search(r2.runtime.db, r2.runtime.store, sid2)
    assert "stop decision (application 3): expected none, recorded made up" in str(
        result.mismatches[0]
    )


def test_budget_is_the_synchronous_number_of_evaluations(tmp_path: Path, pool: Path) -> None:
    cfg = config(pool, patience=50, max_iterations=5)
    r, sid = run(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art", cfg)
    summary = search_summary(r.runtime.db, sid)
    assert summary.status == "completed"
    assert summary.stop_reason == "reached max_iterations=5"
    evs = dev_evaluations(r, sid)
    assert len(evs) == 7 * 6 == evaluation_budget(7, SwarmParams(max_iterations=5))
    assert all(e.status == "done" for e in evs)
    apps = applications(r, sid)
    assert len(apps) == 42 and apps[-1].stop_reason == summary.stop_reason
    # The budget ran out 7 applications before the end: those only drain what is in flight.
    assert [a.moved for a in apps[-7:]] == [False] * 7 and all(a.moved for a in apps[:-7])
    audited(r, sid)


def test_patience_counts_blocks_of_n_applications(tmp_path: Path, pool: Path) -> None:
    cfg = config(pool, patience=2, max_iterations=40)
    r, sid = run(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art", cfg)
    summary = search_summary(r.runtime.db, sid)
    assert summary.status == "completed"
    assert summary.stop_reason == "global best unchanged for the last 2 iterations (patience)"
    apps = applications(r, sid)
    stops = [a for a in apps if a.stop_reason is not None]
    assert len(stops) == 1
    stop = stops[0]
    # Taken at the end of a block of 7, by the synchronous rule over the blocks' bests ...
    assert (stop.seq + 1) % 7 == 0
    blocks = [a.best_utility for a in apps if (a.seq + 1) % 7 == 0 and a.seq <= stop.seq]
    params = SwarmParams(patience=2, max_iterations=40)
    assert should_stop(blocks, len(blocks), params) == stop.stop_reason
    assert asynchronous_stop(blocks[:-1], stop.seq + 1 - 7, 7, params) is None
    # ... after which nobody moves, and exactly the evaluations in flight are applied.
    after = [a for a in apps if a.seq >= stop.seq]
    assert not any(a.moved for a in after) and len(after) == 7
    assert len(dev_evaluations(r, sid)) == len(apps) < evaluation_budget(7, params)
    audited(r, sid)


def test_a_redelivered_result_is_not_applied_twice(url: str, tmp_path: Path, pool: Path) -> None:
    r = runner(url, tmp_path / "art", shuffle=None)
    rt = r.runtime
    sid = create_search(rt, config(pool), check_objective=False)
    assert run_evaluation(rt, sid, 0, 3).status == "done"
    assert run_evaluation(rt, sid, 0, 3).status == "duplicate"
    assert apply_pending(rt, sid) == []  # nothing recorded is left unapplied
    apps = applications(r, sid)
    assert [(a.seq, a.iteration, a.particle, a.moved) for a in apps] == [(0, 0, 3, True)]
    # Its next evaluation was sent once, by the first delivery only.
    sent = [m for m in r.queue.messages if m[1]["iteration"] == 1]
    assert sent == [
        ("swarmq.evaluate", {"search_id": sid, "iteration": 1, "particle": 3, "split": "dev"})
    ]
    # The database refuses a second application of the same result outright.
    with (
        pytest.raises(StorageError, match=r"uq_application|UNIQUE constraint failed: applications"),
        rt.db.session() as s,
    ):
        s.add(
            ApplicationRow(
                **{
                    c: getattr(apps[0], c)
                    for c in ApplicationRow.__table__.columns.keys()  # noqa: SIM118
                    if c != "seq"
                },
                seq=1,
            )
        )
    r.drive(sid)
    assert search_summary(rt.db, sid).status == "completed"
    audited(r, sid)


def test_results_recorded_while_cancelled_are_applied_on_resume(tmp_path: Path, pool: Path) -> None:
    from swarmq.engine import cancel_search

    r = runner(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art", shuffle=None)
    rt = r.runtime
    sid = create_search(rt, config(pool), check_objective=False)
    run_evaluation(rt, sid, 0, 0)
    cancel_search(rt.db, sid)
    assert run_evaluation(rt, sid, 0, 1).status == "cancelled"
    # A worker that claimed before the cancel finishes and records; nothing is applied.
    with rt.db.session() as s:
        s.execute(update(SearchRow).where(SearchRow.id == sid).values(status="running"))
    r.queue.messages.clear()
    with rt.db.session() as s:
        s.execute(update(SearchRow).where(SearchRow.id == sid).values(status="cancelled"))
    assert len(applications(r, sid)) == 1
    r.drive(sid)
    assert search_summary(rt.db, sid).status == "completed"
    audited(r, sid)


KILLED_RUN = """
import sys
sys.path.insert(0, {tests!r})
from test_asynchronous import config, runner
from pathlib import Path
from swarmq.engine import create_search
r = runner({url!r}, Path({artifacts!r}), shuffle=3)
sid = create_search(r.runtime, config(Path({pool!r})), check_objective=False)
print(sid, flush=True)
r.drive(sid)
"""


def test_kill_and_resume_continue_the_search(tmp_path: Path, pool: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    faults = tmp_path / "faults"
    (faults / "fired").mkdir(parents=True)
    # SIGKILL right after a result (and its application) committed, before the particle's
    # next evaluation is sent.
    arm(faults, "evaluate.recorded", iteration=3, particle=2, split="dev")
    env = os.environ | {
        "SWARMQ_FAULT_HOOK": "fault_hooks:fault",
        FAULTS_ENV: str(faults),
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    script = KILLED_RUN.format(
        tests=str(TESTS), url=url, artifacts=str(tmp_path / "art"), pool=str(pool)
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert len(fired(faults, "evaluate.recorded")) == 1
    sid = proc.stdout.split()[0]
    r = runner(url, tmp_path / "art", shuffle=4)
    before = applications(r, sid)
    assert search_summary(r.runtime.db, sid).status == "running"
    killed = next(a for a in before if (a.iteration, a.particle) == (3, 2))
    assert killed.moved and killed.seq == len(before) - 1
    with r.runtime.db.session() as s:  # its next evaluation was created but never sent
        nxt = s.scalars(
            select(EvaluationRow).where(
                EvaluationRow.search_id == sid,
                EvaluationRow.iteration == 4,
                EvaluationRow.particle == 2,
            )
        ).one()
        assert nxt.status == "pending"
    r.drive(sid)
    after = applications(r, sid)
    assert search_summary(r.runtime.db, sid).status == "completed"
    # A continuation: the record before the crash is kept as it was, and the whole audits.
    assert [(a.seq, a.iteration, a.particle, a.best_hash) for a in after[: len(before)]] == [
        (a.seq, a.iteration, a.particle, a.best_hash) for a in before
    ]
    assert len(after) > len(before)
    assert all(e.status == "done" and e.attempts == 1 for e in dev_evaluations(r, sid))
    audited(r, sid)


def test_parse_config_keeps_the_mode(pool: Path) -> None:
    cfg = config(pool)
    assert SearchConfig.from_json(cfg.to_json()).swarm.mode == "asynchronous"
    assert (
        parse_config(
            {
                "experts": {"path": str(pool)},
                "base_model": {"path": "unused"},
                "objective": {"utility": "exact_match", "dataset": str(pool / "none.json")},
            }
        ).swarm.mode
        == "synchronous"
    )
