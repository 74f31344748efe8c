"""``swarmq audit``: a faithful record passes; every kind of tampering is named precisely.

Searches run on the engine with a closed-form utility (no model). Each tampering test works on
a fresh copy of one recorded search (SQLite file and artifact store).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file
from searches import closed_form, distance_utility, make_pool
from sqlalchemy import select
from sqlalchemy.orm.attributes import flag_modified

from swarmq.cli import main
from swarmq.config import SearchConfig
from swarmq.engine import coordinate_iteration, create_search, run_evaluation
from swarmq.engine._common import put_vectors_in_txn
from swarmq.execution import EmbeddedRunner
from swarmq.reporting import AuditResult, audit_search
from swarmq.settings import Settings
from swarmq.storage import (
    Database,
    EvaluationRow,
    IterationRow,
    LocalArtifactStore,
    ParticleStateRow,
    SearchRow,
    encode_vector,
)


def config(pool: Path, **swarm: Any) -> SearchConfig:
    search = {k: swarm.pop(k) for k in ("seed", "particles", "max_iterations") if k in swarm}
    # Short patience so that restarts happen; dropout so that skips happen.
    swarm = {"restart_patience": 0.5, "dropout_n": 0.2} | swarm
    return closed_form(pool, swarm=swarm, **search)


def run_search(url: str, artifacts: Path, cfg: SearchConfig) -> tuple[EmbeddedRunner, str]:
    runner = EmbeddedRunner(Settings(url, artifacts), evaluate=distance_utility)
    sid = create_search(runner.runtime, cfg, check_objective=False)
    runner.drive(sid)
    return runner, sid


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One completed search on SQLite: (folder with db.sqlite, art/ and pool/, search id)."""
    root = tmp_path_factory.mktemp("recorded")
    pool = make_pool(root / "pool")
    runner, sid = run_search(
        f"sqlite:///{root / 'db.sqlite'}", root / "art", config(pool, max_iterations=10, patience=8)
    )
    runner.runtime.db.engine.dispose()  # checkpoint the WAL so the file copies whole
    return root, sid


@pytest.fixture
def copy(recorded: tuple[Path, str], tmp_path: Path) -> tuple[Database, LocalArtifactStore, str]:
    root, sid = recorded
    for f in root.glob("db.sqlite*"):
        shutil.copy(f, tmp_path / f.name)
    shutil.copytree(root / "art", tmp_path / "art")
    shutil.copytree(root / "pool", tmp_path / "pool")
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    return db, LocalArtifactStore(tmp_path / "art"), sid


def state(db: Database, sid: str, t: int, i: int) -> ParticleStateRow:
    with db.session() as s:
        row = s.get(ParticleStateRow, (sid, t, i))
        assert row is not None
        return row


def first(result: AuditResult) -> str:
    assert not result.ok, "the audit should have found a mismatch"
    return str(result.mismatches[0])


@pytest.mark.parametrize(
    "swarm",
    [{}, {"initial_velocity": "best", "dropout_k": 0.3}, {"initial_velocity": "zero"}],
    ids=["random-velocity", "best-velocity-dropout-k", "zero-velocity"],
)
def test_faithful_record_passes(url: str, tmp_path: Path, swarm: dict[str, Any]) -> None:
    pool = make_pool(tmp_path / "pool")
    runner, sid = run_search(url, tmp_path / "art", config(pool, **swarm))
    result = audit_search(runner.runtime.db, runner.runtime.store, sid, check_experts=True)
    assert result.ok, [str(m) for m in result.mismatches]
    with runner.runtime.db.session() as s:
        n_states = len(
            s.scalars(select(ParticleStateRow).where(ParticleStateRow.search_id == sid)).all()
        )
        restarts = s.scalars(
            select(ParticleStateRow).where(
                ParticleStateRow.search_id == sid, ParticleStateRow.restarted.is_(True)
            )
        ).all()
    assert result.states == n_states and result.updates == n_states - 7
    assert result.iterations >= 3 and result.artifacts_read > 0
    if not swarm:
        assert restarts, "the test search should exercise restarts"


def test_search_in_progress_passes(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "pool")
    runner = EmbeddedRunner(
        Settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art"), evaluate=distance_utility
    )
    rt = runner.runtime
    sid = create_search(rt, config(pool, dropout_n=0.0), check_objective=False)
    assert audit_search(rt.db, rt.store, sid).ok  # nothing evaluated yet
    for i in range(7):
        run_evaluation(rt, sid, 0, i)
    coordinate_iteration(rt, sid, 0)
    for i in range(3):  # iteration 1 half evaluated
        run_evaluation(rt, sid, 1, i)
    result = audit_search(rt.db, rt.store, sid)
    assert result.ok, [str(m) for m in result.mismatches]
    assert result.iterations == 2 and result.updates == 7


def test_corrupted_artifact_is_named(copy: tuple[Database, LocalArtifactStore, str]) -> None:
    db, store, sid = copy
    digest = state(db, sid, 3, 2).position_hash
    path = store.root / digest[:2] / f"{digest}.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    message = first(audit_search(db, store, sid))
    assert message.startswith(f"iteration 3, particle 2, artifact position {digest}"), message
    assert "content hashes to" in message


def test_artifact_swapped_for_another_valid_vector_is_named(
    copy: tuple[Database, LocalArtifactStore, str],
) -> None:
    db, store, sid = copy
    target = state(db, sid, 2, 5).velocity_hash
    assert target is not None
    other = np.arange(18, dtype=np.float32)  # a well-formed vector of the right size
    path = store.root / target[:2] / f"{target}.safetensors"
    path.write_bytes(encode_vector(other))
    message = first(audit_search(db, store, sid))
    assert message.startswith(f"iteration 2, particle 5, artifact velocity {target}"), message


def test_missing_artifact_is_named(copy: tuple[Database, LocalArtifactStore, str]) -> None:
    db, store, sid = copy
    digest = state(db, sid, 0, 1).position_hash
    (store.root / digest[:2] / f"{digest}.safetensors").unlink()
    message = first(audit_search(db, store, sid))
    assert message.startswith(f"iteration 0, particle 1, artifact position {digest}"), message
    assert "missing" in message


def test_tampered_factor_is_named(copy: tuple[Database, LocalArtifactStore, str]) -> None:
    db, store, sid = copy
    with db.session() as s:
        row = s.get(ParticleStateRow, (sid, 2, 1))
        assert row is not None and row.update is not None
        original = row.update["factors"][0]
        row.update["factors"][0] = original + 0.125
        flag_modified(row, "update")
    result = audit_search(db, store, sid, max_mismatches=10)
    message = first(result)
    assert message == (
        f"iteration 2, particle 1, factors [r_v, r_p, r_g, r_w]: expected [{original!r}, "
        + message.split(f"[{original!r}, ", 1)[1]
    )
    assert repr(original + 0.125) in message
    # Only the record of the factor is wrong: the position follows from the coefficients.
    assert len(result.mismatches) == 1


def test_tampered_position_hash_is_named(copy: tuple[Database, LocalArtifactStore, str]) -> None:
    db, store, sid = copy
    with db.session() as s:
        row = s.get(ParticleStateRow, (sid, 4, 3))
        other = s.get(ParticleStateRow, (sid, 4, 4))
        assert row is not None and other is not None
        genuine, row.position_hash = row.position_hash, other.position_hash
    message = first(audit_search(db, store, sid))
    assert message == (
        f"iteration 4, particle 3, position: expected {genuine}, recorded {other.position_hash}"
    )


def test_tampered_coefficient_step_and_restart_are_named(
    copy: tuple[Database, LocalArtifactStore, str],
) -> None:
    db, store, sid = copy
    with db.session() as s:
        row = s.get(ParticleStateRow, (sid, 5, 0))
        assert row is not None and row.update is not None
        row.update["coefficients"][2] = 0.5
        flag_modified(row, "update")
    message = first(audit_search(db, store, sid))
    assert message.startswith("iteration 5, particle 0, coefficients [a, b, c, d]: expected")

    with db.session() as s:
        it = s.get(IterationRow, (sid, 3))
        assert it is not None
        it.step_length = 0.5
    message = first(audit_search(db, store, sid))
    assert message.startswith("iteration 3, step_length: expected 0.9025, recorded 0.5")


def test_tampered_input_hash_is_named(copy: tuple[Database, LocalArtifactStore, str]) -> None:
    db, store, sid = copy
    with db.session() as s:
        row = s.get(ParticleStateRow, (sid, 6, 2))
        assert row is not None and row.update is not None
        expected = row.update["g"]
        row.update["g"] = row.update["g_worst"]
        flag_modified(row, "update")
    message = first(audit_search(db, store, sid))
    assert message.startswith(f"iteration 6, particle 2, input g: expected {expected}")


def test_tampered_bookkeeping_is_named(copy: tuple[Database, LocalArtifactStore, str]) -> None:
    db, store, sid = copy
    with db.session() as s:
        row = s.scalars(
            select(ParticleStateRow)
            .where(
                ParticleStateRow.search_id == sid,
                ParticleStateRow.iteration == 2,
                ParticleStateRow.evaluated.is_(True),
            )
            .order_by(ParticleStateRow.particle.desc())
            .limit(1)
        ).one()
        assert row.utility is not None
        particle = row.particle
        row.utility += 1.0
    message = first(audit_search(db, store, sid))
    assert message.startswith(f"iteration 2, particle {particle}, utility: expected"), message

    with db.session() as s:
        row = s.get(ParticleStateRow, (sid, 2, particle))
        assert row is not None and row.utility is not None
        row.utility -= 1.0
        it = s.get(IterationRow, (sid, 1))
        assert it is not None and it.best_particle is not None
        it.best_particle = (it.best_particle + 1) % 7
    message = first(audit_search(db, store, sid))
    assert message.startswith(
        "iteration 1, global best (particle, iteration, utility, hash): expected"
    ), message


def test_changed_expert_pool_is_named(
    copy: tuple[Database, LocalArtifactStore, str], tmp_path: Path
) -> None:
    db, store, sid = copy
    assert audit_search(db, store, sid).ok
    # The search recorded the module fixture's pool; point the record at this test's copy,
    # then change one expert in it.
    with db.session() as s:
        search = s.get(SearchRow, sid)
        assert search is not None
        recorded_config = json.loads(search.config_json)
        recorded_config["experts"]["path"] = str(tmp_path / "pool")
        search.config_json = json.dumps(recorded_config, sort_keys=True)
    assert audit_search(db, store, sid, check_experts=True).ok
    save_file(
        {"a.weight": np.ones(6, np.float32), "b.weight": np.ones((3, 4), np.float32)},
        str(tmp_path / "pool" / "e2.safetensors"),
    )
    message = first(audit_search(db, store, sid, check_experts=True))
    assert message.startswith("iteration 0, particle 2, position (expert e2 on disk)"), message


def test_cli_audit_exit_status(copy: tuple[Database, LocalArtifactStore, str]) -> None:
    db, store, sid = copy
    args = ["--db", db.url, "--artifacts", str(store.root), "audit", sid, "--quiet"]
    ok = CliRunner().invoke(main, args)
    assert ok.exit_code == 0, ok.output
    assert "passed" in ok.output and "updates recomputed" in ok.output
    with db.session() as s:
        row = s.get(ParticleStateRow, (sid, 2, 1))
        assert row is not None and row.update is not None
        row.update["step_length"] = 2.0
        flag_modified(row, "update")
    bad = CliRunner().invoke(main, args)
    assert bad.exit_code == 1
    assert "iteration 2, particle 1, update step_length: expected 0.95, recorded 2.0" in bad.output
    as_json = CliRunner().invoke(main, [*args, "--json", "--max-mismatches", "5"])
    assert as_json.exit_code == 1
    out = json.loads(as_json.output)
    assert out["ok"] is False and out["mismatches"][0]["iteration"] == 2


def test_non_finite_recorded_vector_fails_the_audit(tmp_path: Path) -> None:
    # An expert's recorded position replaced by one holding NaN, every reference to it made
    # consistent (a record from before experts were checked, or a forged one): recomputing
    # the record reproduces the NaN bit for bit, so only a check of the values can see it.
    pool = make_pool(tmp_path / "pool")
    runner = EmbeddedRunner(
        Settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art"), evaluate=distance_utility
    )
    cfg = config(pool, particles=4, max_iterations=0, initial_velocity="zero", dropout_n=0.0)
    rt = runner.runtime
    sid = create_search(rt, cfg, check_objective=False)
    runner.drive(sid)
    assert audit_search(rt.db, rt.store, sid).ok
    with rt.db.session() as s:
        st = s.get(ParticleStateRow, (sid, 0, 1))
        assert st is not None
        old = st.position_hash
        vector = rt.store.get_vector(old).copy()
        vector[:6] = np.nan
        new = put_vectors_in_txn(s, rt.store, [("position", vector)])[0]
        st.position_hash = st.best_hash = new
        for ev in s.scalars(select(EvaluationRow).where(EvaluationRow.search_id == sid)):
            if ev.position_hash == old:
                ev.position_hash = new
        it = s.get(IterationRow, (sid, 0))
        assert it is not None
        it.best_hash = new if it.best_hash == old else it.best_hash
        it.worst_hash = new if it.worst_hash == old else it.worst_hash
    result = audit_search(rt.db, rt.store, sid)
    assert "iteration 0, particle 1, position " in first(result)
    assert "expected finite numbers, recorded 6 of 18 not finite (the first nan" in first(result)


def test_reevaluation_sees_a_utility_changed_consistently(
    copy: tuple[Database, LocalArtifactStore, str],
) -> None:
    db, store, sid = copy
    ok = audit_search(db, store, sid, reevaluate=6, final=True, evaluate=distance_utility)
    assert ok.ok and ok.reevaluated == 6 + 2, [str(m) for m in ok.mismatches]
    # A dev utility changed in both tables (and still below its particle's personal best, so
    # no bookkeeping moves): the recomputation of the record cannot see it.
    with db.session() as s:
        st = s.get(ParticleStateRow, (sid, 3, 2))
        assert st is not None and st.utility is not None and st.best_utility is not None
        assert st.utility < st.best_utility
        forged = (st.utility + st.best_utility) / 2
        st.utility = forged
        ev = s.scalars(
            select(EvaluationRow).where(
                EvaluationRow.search_id == sid,
                EvaluationRow.iteration == 3,
                EvaluationRow.particle == 2,
                EvaluationRow.split == "dev",
            )
        ).one()
        ev.utility = forged
    assert audit_search(db, store, sid).ok  # invisible without evaluating again
    every = audit_search(db, store, sid, reevaluate=10_000, evaluate=distance_utility)
    message = first(every)
    assert message.startswith("iteration 3, particle 2, dev utility (evaluated again): expected")
    assert message.endswith(f"recorded {forged!r}")


def test_reevaluation_of_the_final_table_sees_a_changed_test_score(
    copy: tuple[Database, LocalArtifactStore, str],
) -> None:
    db, store, sid = copy
    with db.session() as s:
        ev = s.scalars(
            select(EvaluationRow).where(
                EvaluationRow.search_id == sid, EvaluationRow.split == "test"
            )
        ).first()
        assert ev is not None and ev.utility is not None
        where = (ev.iteration, ev.particle)
        ev.utility += 0.5
    assert audit_search(db, store, sid).ok
    assert audit_search(db, store, sid, reevaluate=3, evaluate=distance_utility).ok
    found = audit_search(db, store, sid, final=True, evaluate=distance_utility)
    assert first(found).startswith(
        f"iteration {where[0]}, particle {where[1]}, test utility (evaluated again)"
    )
    # Another device or dtype: a difference within the stated tolerance passes.
    assert audit_search(db, store, sid, final=True, evaluate=distance_utility, tolerance=0.5).ok


def test_reevaluation_sample_is_seeded_and_bounded() -> None:
    from swarmq.reporting._reevaluate import sample_evaluations

    keys = [(t, p) for t in range(5) for p in range(7)]
    a = sample_evaluations(keys, 4, seed=3)
    assert a == sample_evaluations(keys, 4, seed=3) and len(set(a)) == 4 and a == sorted(a)
    assert a != sample_evaluations(keys, 4, seed=4)
    assert sample_evaluations(keys, 99, seed=3) == keys
