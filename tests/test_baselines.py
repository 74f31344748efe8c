"""The final table's baselines: soups, peft's merges, greedy soup, LoraHub, ensembles.

The search and its baselines run on the closed-form classifier of ``searches.py`` (a position
answers example j with the sign of one of its coordinates), so every choice a baseline makes
is recomputed here by hand from the recorded dev utilities. The same command on a real (tiny)
language model is in ``test_demo_baselines.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from searches import SignScorer, sign_config, sign_pool, sign_utility
from sqlalchemy import delete, select, update

from swarmq.engine import BASELINES, compute_baselines, create_search
from swarmq.errors import SwarmqError
from swarmq.execution import EmbeddedRunner
from swarmq.reporting import audit_search, load_record, paired_bootstrap, result_rows, write_report
from swarmq.settings import Settings
from swarmq.storage import BaselineRow, EvaluationRow, ParticleStateRow, decode_item_scores

ALL = (
    "uniform_soup",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "greedy_soup",
    "lorahub",
    "ensemble_top3",
)


@pytest.fixture
def searched(tmp_path: Path) -> tuple[EmbeddedRunner, str]:
    runner = EmbeddedRunner(
        Settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art"), evaluate=sign_utility
    )
    sid = create_search(
        runner.runtime, sign_config(sign_pool(tmp_path / "pool")), check_objective=False
    )
    runner.drive(sid)
    return runner, sid


def rows_of(runner: EmbeddedRunner, sid: str) -> dict[tuple[str, str, int], BaselineRow]:
    with runner.runtime.db.session() as s:
        rows = s.scalars(select(BaselineRow).where(BaselineRow.search_id == sid)).all()
        for r in rows:
            _ = r.item_scores  # deferred column: load it inside the session
        return {(r.name, r.split, r.trial): r for r in rows}


def experts_of(runner: EmbeddedRunner, sid: str) -> tuple[list[np.ndarray], list[float], int]:
    with runner.runtime.db.session() as s:
        states = s.scalars(
            select(ParticleStateRow)
            .where(ParticleStateRow.search_id == sid, ParticleStateRow.iteration == 0)
            .order_by(ParticleStateRow.particle)
            .limit(4)
        ).all()
        dev_done = len(
            s.scalars(
                select(EvaluationRow.id).where(
                    EvaluationRow.search_id == sid,
                    EvaluationRow.split == "dev",
                    EvaluationRow.status == "done",
                )
            ).all()
        )
        vectors = [runner.runtime.store.get_vector(st.position_hash) for st in states]
        return vectors, [float(st.utility or 0) for st in states], dev_done


def test_every_baseline_is_recorded_checked_and_shown(
    searched: tuple[EmbeddedRunner, str], tmp_path: Path
) -> None:
    runner, sid = searched
    db, store = runner.runtime.db, runner.runtime.store
    scorer = SignScorer()
    run = compute_baselines(db, store, sid, top_k=3, scorer=scorer)
    assert run.unavailable == ()
    assert run.baselines == tuple(f"{n}/{sp}" for n in ALL for sp in ("dev", "test"))
    rows = rows_of(runner, sid)
    experts, expert_dev, dev_done = experts_of(runner, sid)
    truth = SignScorer()

    # Every evaluation: a position in the store (but the ensemble's), who and when, item scores.
    for (name, split, _trial), r in rows.items():
        assert r.worker and r.started_at is not None and r.finished_at is not None
        assert r.item_scores is not None and len(decode_item_scores(r.item_scores)) == 6
        if not name.startswith("ensemble"):
            vector = store.get_vector(r.position_hash)
            assert r.utility == truth.score(vector, split).value

    # Task arithmetic is peft's task_arithmetic on task vectors (the base is zero here): the
    # experts' sum times the common weight; the weights 1/n, 0.5 and 1 are tried on dev.
    for trial, scale in enumerate((0.25, 0.5, 1.0), start=1):
        r = rows[("task_arithmetic", "dev", trial)]
        assert r.metrics["scale"] == scale
        expected = (scale * np.sum(experts, axis=0)).astype(np.float32)
        np.testing.assert_allclose(store.get_vector(r.position_hash), expected, rtol=1e-6)
    for method in ("task_arithmetic", "ties", "dare_ties", "dare_linear"):
        trials = [rows[(method, "dev", t)] for t in (1, 2, 3)]
        best = max(trials, key=lambda r: r.utility)  # the first among equals
        dev, test = rows[(method, "dev", 0)], rows[(method, "test", 0)]
        assert dev.metrics["chosen_trial"] == best.trial and dev.utility == best.utility
        assert dev.position_hash == best.position_hash == test.position_hash
        if method != "task_arithmetic":
            assert best.metrics["density"] == 0.5
    # DARE drops at random, from a seed derived from the search's: reproducible.
    dare = [rows[("dare_ties", "dev", t)].position_hash for t in (1, 2, 3)]
    ties = [rows[("ties", "dev", t)].position_hash for t in (1, 2, 3)]
    assert dare != ties

    # Greedy soup by hand: experts by dev utility, each kept if the soup's dev does not drop.
    order = sorted(range(4), key=lambda p: (-expert_dev[p], p))
    kept, best = [order[0]], expert_dev[order[0]]
    for t, e in enumerate(order[1:], start=1):
        soup = (
            np.sum([experts[i] for i in [*kept, e]], axis=0, dtype=np.float64) / (len(kept) + 1)
        ).astype(np.float32)
        utility = truth.score(soup, "dev").value
        assert rows[("greedy_soup", "dev", t)].utility == utility
        assert rows[("greedy_soup", "dev", t)].metrics["ingredients"] == [*kept, e]
        if utility >= best:
            kept, best = [*kept, e], utility
    assert rows[("greedy_soup", "dev", 0)].utility == best
    assert rows[("greedy_soup", "test", 0)].metrics["ingredients"] == kept

    # LoraHub: as many dev evaluations as the swarm made, starting from the uniform soup,
    # within [-1.5, 1.5]; the best on dev is evaluated on test.
    trials = sorted(
        (r for k, r in rows.items() if k[0] == "lorahub" and k[2] > 0), key=lambda r: r.trial
    )
    assert len(trials) == dev_done
    assert trials[0].metrics["weights"] == [0.25] * 4
    assert all(abs(w) <= 1.5 for r in trials for w in r.metrics["weights"])
    assert len({tuple(r.metrics["weights"]) for r in trials}) == len(trials)  # CMA-ES moves
    best_trial = max(trials, key=lambda r: r.utility)
    assert rows[("lorahub", "test", 0)].position_hash == best_trial.position_hash
    weighted = np.zeros(experts[0].shape, dtype=np.float64)
    for w, x in zip(best_trial.metrics["weights"], experts, strict=True):
        weighted += w * x.astype(np.float64)
    assert (
        store.get_vector(best_trial.position_hash).tobytes()
        == weighted.astype(np.float32).tobytes()
    )

    # The final table shows them all, with paired intervals from the recorded item scores.
    rec = load_record(db, sid)
    table = {r.key: r for r in result_rows(rec)}
    assert set(BASELINES) - {"ensemble"} < set(table) and "ensemble_top3" in table
    gb = table["global_best"]
    last = rec.applied[-1]
    best_items = rec.test_items[(last.best_iteration, last.best_particle)]
    for key, row in table.items():
        if key == "global_best":
            assert row.interval is None
            continue
        assert row.interval is not None, key
        items = (
            decode_item_scores(rows[(key, "test", 0)].item_scores)
            if (key, "test", 0) in rows
            else None
        )
        if items is not None:
            assert row.interval == paired_bootstrap(best_items, items)
            assert row.interval.estimate == pytest.approx(gb.test - row.test)
    labels = " ".join(r.label for r in table.values())
    for word in ("task arithmetic", "TIES", "DARE-TIES", "DARE-linear", "greedy soup", "LoraHub"):
        assert word in labels
    page = write_report(db, sid, tmp_path / "report").index.read_text()
    assert "paired bootstrap" in page and "LoraHub" in page and "greedy soup" in page
    assert "global best − row" in page

    # The audit recomputes the soups and LoraHub's positions, replays the choices, and passes.
    result = audit_search(db, store, sid)
    assert result.ok, result.mismatches
    assert result.baselines == len(rows)

    # Rerun: everything is kept, nothing is evaluated again.
    scorer.calls.clear()
    again = compute_baselines(db, store, sid, top_k=3, scorer=scorer)
    assert again.baselines == () and len(again.skipped) == 2 * len(ALL)
    assert [c for c in scorer.calls if c[0] == "score"] == []
    # Nor is the model loaded then (this search's base model, "unused", does not exist).
    assert compute_baselines(db, store, sid, top_k=3).baselines == ()


def test_an_interrupted_baseline_replays_what_was_recorded(
    searched: tuple[EmbeddedRunner, str],
) -> None:
    runner, sid = searched
    db, store = runner.runtime.db, runner.runtime.store
    compute_baselines(db, store, sid, scorer=SignScorer(), only=("lorahub", "greedy_soup"))
    before = rows_of(runner, sid)
    n = len([k for k in before if k[0] == "lorahub" and k[2] > 0])
    # A crash after 5 LoraHub candidates: the later ones and the results were never written.
    with db.session() as s:
        s.execute(
            delete(BaselineRow).where(
                BaselineRow.name == "lorahub", (BaselineRow.trial > 5) | (BaselineRow.trial == 0)
            )
        )
    scorer = SignScorer()
    run = compute_baselines(db, store, sid, scorer=scorer, only=("lorahub", "greedy_soup"))
    assert run.baselines == ("lorahub/dev", "lorahub/test")
    # Only the missing candidates and the test result were evaluated.
    assert scorer.calls.count(("score", "dev")) == n - 5
    assert scorer.calls.count(("score", "test")) == 1
    after = rows_of(runner, sid)
    assert {k: (r.utility, r.position_hash) for k, r in after.items()} == {
        k: (r.utility, r.position_hash) for k, r in before.items()
    }
    # A record that the same choices no longer reproduce is refused, not mixed in.
    with db.session() as s:
        s.execute(delete(BaselineRow).where(BaselineRow.name == "lorahub", BaselineRow.trial == 0))
        s.execute(
            update(BaselineRow)
            .where(BaselineRow.name == "lorahub", BaselineRow.trial == 3)
            .values(position_hash="0" * 64)
        )
    with pytest.raises(SwarmqError, match="recompute it with --force"):
        compute_baselines(db, store, sid, scorer=SignScorer(), only=("lorahub",))
    forced = compute_baselines(db, store, sid, scorer=SignScorer(), only=("lorahub",), force=True)
    assert forced.baselines == ("lorahub/dev", "lorahub/test")


def test_the_audit_names_a_tampered_baseline(searched: tuple[EmbeddedRunner, str]) -> None:
    runner, sid = searched
    db, store = runner.runtime.db, runner.runtime.store
    compute_baselines(
        db, store, sid, scorer=SignScorer(), only=("lorahub", "greedy_soup", "ensemble")
    )
    assert audit_search(db, store, sid).ok
    with db.session() as s:
        row = s.scalars(
            select(BaselineRow).where(BaselineRow.name == "lorahub", BaselineRow.trial == 4)
        ).one()
        row.metrics = {**row.metrics, "weights": [0.1, 0.2, 0.3, 0.4]}
    result = audit_search(db, store, sid, max_mismatches=5)
    assert not result.ok
    named = [m.field for m in result.mismatches]
    assert "baseline lorahub dev trial 4: position" in named
    assert "baseline lorahub dev trial 4: weights" in named
    with db.session() as s:
        row = s.scalars(
            select(BaselineRow).where(
                BaselineRow.name == "ensemble_top5", BaselineRow.split == "test"
            )
        ).one()
        votes = list(row.metrics["predictions"])
        votes[0] = "B" if votes[0] != "B" else "A"
        row.metrics = {**row.metrics, "predictions": votes}
    fields = [m.field for m in audit_search(db, store, sid, max_mismatches=10).mismatches]
    assert "baseline ensemble_top5 test: vote" in fields


def test_unknown_baseline_and_bad_density_are_refused(searched: tuple[EmbeddedRunner, str]) -> None:
    runner, sid = searched
    db, store = runner.runtime.db, runner.runtime.store
    with pytest.raises(SwarmqError, match="unknown baseline 'soup'; choose among uniform_soup"):
        compute_baselines(db, store, sid, scorer=SignScorer(), only=("soup",))
    with pytest.raises(SwarmqError, match=r"density = 0\.0"):
        compute_baselines(db, store, sid, scorer=SignScorer(), density=0.0)
