"""The record of per-item scores: their compact form, the migration, the engine writing them
with every evaluation, and the paired bootstrap computed from them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from searches import closed_form, distance, make_pool
from sqlalchemy import inspect, select, text

from swarmq.engine import create_search
from swarmq.errors import SwarmqError
from swarmq.execution import EmbeddedRunner
from swarmq.objectives import UtilityResult
from swarmq.reporting import paired_bootstrap
from swarmq.settings import Settings
from swarmq.storage import (
    Base,
    BaselineRow,
    Database,
    EvaluationRow,
    decode_item_scores,
    encode_item_scores,
)

# ---------------------------------------------------------------------------- the compact form


def test_item_scores_round_trip_and_size() -> None:
    correct = np.random.default_rng(0).integers(0, 2, size=1000).astype(float)
    blob = encode_item_scores(correct)
    assert len(blob) == 5 + 125  # one bit per item for 0/1 scores
    np.testing.assert_array_equal(decode_item_scores(blob), correct)
    probs = np.random.default_rng(1).random(7)
    blob = encode_item_scores(list(probs))
    assert len(blob) == 5 + 8 * 7  # exact float64 otherwise
    assert decode_item_scores(blob).tolist() == probs.tolist()
    assert decode_item_scores(encode_item_scores([-1.0, 0.0, 1.0])).tolist() == [-1.0, 0.0, 1.0]
    assert decode_item_scores(encode_item_scores([])).tolist() == []
    with pytest.raises(SwarmqError, match="finite"):
        encode_item_scores([0.5, float("inf")])
    with pytest.raises(SwarmqError, match="corrupted"):
        decode_item_scores(blob[:-1])


# ---------------------------------------------------------------------------- the migration


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_keeps_baselines_and_matches_the_models(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    url = (
        f"sqlite:///{tmp_path / 'db.sqlite'}"
        if backend == "sqlite"
        else str(request.getfixturevalue("postgres_url"))
    )
    db = Database(url)
    db.upgrade("0003")  # a database of the previous release, holding a baseline score
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO searches (id, name, status, config_json, config_hash, seed, "
                "n_particles, n_experts, layout_json, current_iteration, created_at, updated_at) "
                "VALUES ('s1', 'n', 'completed', '{}', 'h', 0, 2, 2, '[]', 0, "
                "'2026-01-01', '2026-01-01')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO baselines (search_id, name, split, utility, created_at) "
                "VALUES ('s1', 'uniform_soup', 'dev', 0.5, '2026-01-01')"
            )
        )
    db.upgrade()
    db.check_schema()
    with db.session() as s:
        row = s.scalars(select(BaselineRow)).one()
        assert (row.trial, row.utility, row.item_scores) == (0, 0.5, None)
        # Trials of one baseline are distinct rows; the same trial twice is refused.
        s.add(BaselineRow(search_id="s1", name="uniform_soup", split="dev", trial=1, utility=0.4))
    with pytest.raises(SwarmqError), db.session() as s:
        s.add(BaselineRow(search_id="s1", name="uniform_soup", split="dev", trial=1, utility=0.3))
    columns = {c["name"] for c in inspect(db.engine).get_columns("evaluations")}
    assert "item_scores" in columns
    # The migrated schema is the models' schema (nothing for autogenerate to add or drop).
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    from alembic import command

    command.downgrade(db._alembic_config(), "0003")  # and back, keeping the results
    assert "trial" not in {c["name"] for c in inspect(db.engine).get_columns("baselines")}
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT utility FROM baselines")).scalars().all() == [0.5]
        assert conn.execute(text("SELECT id FROM searches")).scalars().all() == ["s1"]


# ------------------------------------------------------------------- recorded by the engine


def scored_hook(
    config: Any, adapter: Any, layout: Any, vector: np.ndarray, split: str
) -> UtilityResult:
    """A closed-form utility with per-item scores: item j is vector[j] > 0 (dev: the first 6
    coordinates, test: the next 6)."""
    offset = 0 if split == "dev" else 6
    items = tuple(float(vector[offset + j] > 0) for j in range(6))
    return UtilityResult(distance(vector), {"n": 6}, item_scores=items)


def test_every_evaluation_records_its_item_scores(tmp_path: Path) -> None:
    runner = EmbeddedRunner(
        Settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art"), evaluate=scored_hook
    )
    rt = runner.runtime
    sid = create_search(rt, closed_form(make_pool(tmp_path / "pool")), check_objective=False)
    runner.drive(sid)
    with rt.db.session() as s:
        rows = s.scalars(
            select(EvaluationRow).where(
                EvaluationRow.search_id == sid, EvaluationRow.status == "done"
            )
        ).all()
        assert {r.split for r in rows} == {"dev", "test"}
        for r in rows:
            vector = rt.store.get_vector(r.position_hash)
            expected = scored_hook(None, None, None, vector, r.split).item_scores
            assert r.item_scores is not None
            assert tuple(decode_item_scores(r.item_scores)) == expected
            assert len(r.item_scores) == 5 + 1  # 6 items in one byte
    # A hook that returns (utility, metrics) records no item scores.
    plain = EmbeddedRunner(
        Settings(f"sqlite:///{tmp_path / 'db2.sqlite'}", tmp_path / "art2"),
        evaluate=lambda *a: (distance(a[3]), {}),
    )
    sid2 = create_search(
        plain.runtime, closed_form(make_pool(tmp_path / "pool2")), check_objective=False
    )
    plain.drive(sid2)
    with plain.runtime.db.session() as s:
        assert s.scalars(select(EvaluationRow.item_scores)).all()
        assert set(s.scalars(select(EvaluationRow.item_scores)).all()) == {None}


# ---------------------------------------------------------------------------- the bootstrap


def test_paired_bootstrap_by_hand() -> None:
    rng = np.random.default_rng(5)
    a = rng.integers(0, 2, size=200).astype(float)
    b = a.copy()
    b[:20] = 1 - b[:20]  # b differs from a on 20 items
    interval = paired_bootstrap(a, b, resamples=2000, seed=3)
    # The estimate is the difference of the means; the interval is the percentile interval of
    # the same resampling done by hand.
    assert interval.estimate == pytest.approx(a.mean() - b.mean())
    gen = np.random.default_rng(3)
    d = a - b
    by_hand = d[gen.integers(0, 200, size=(2000, 200))].mean(axis=1)
    assert interval.low == pytest.approx(np.quantile(by_hand, 0.025))
    assert interval.high == pytest.approx(np.quantile(by_hand, 0.975))
    assert interval.low <= interval.estimate <= interval.high
    assert paired_bootstrap(a, b, resamples=2000, seed=3) == interval  # seeded
    same = paired_bootstrap(a, a)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    # Pairing: two models that agree on most items get a narrow interval of their difference.
    better = a.copy()
    better[a == 0][:10] = 1
    better[np.flatnonzero(a == 0)[:30]] = 1
    paired = paired_bootstrap(better, a)
    assert paired.low > 0 and paired.estimate == pytest.approx(30 / 200)
    with pytest.raises(SwarmqError, match="same items"):
        paired_bootstrap(a, b[:10])
    assert json.dumps(interval.as_dict())
