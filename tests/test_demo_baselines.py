"""The paper's comparison on the demo's tiny language model, from the command line.

``swarmq run --seeds 0,1 --baselines`` runs the demo's search once per seed, computes every
baseline of each (peft's merges through ``add_weighted_adapter`` on the demo's LoRA experts),
and summarises them over the seeds; the reports show them with paired intervals, the audit
passes, and rerunning the command after a crash continues the group without duplicating it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, func, select

from swarmq.cli import main
from swarmq.config import load_config
from swarmq.engine import create_search, run_evaluation, seed_group_id, with_seed
from swarmq.execution import EmbeddedRunner
from swarmq.reporting import audit_search, load_record, result_rows, write_report
from swarmq.settings import Settings
from swarmq.storage import BaselineRow, Database, LocalArtifactStore, SearchRow

pytestmark = pytest.mark.slow

KEYS = {
    "best_expert",
    "global_best",
    "oracle_expert",
    "uniform_soup",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "greedy_soup",
    "lorahub",
}


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory, demo_assets: Any) -> Path:
    """The demo's assets and a smaller copy of its search file (fewer iterations and items)."""
    assets = demo_assets
    text = assets.config_path.read_text()
    text = text.replace("particles = 10", "particles = 4").replace(
        "max_iterations = 12", "max_iterations = 3"
    )
    text = text.replace("batch_size = 128", "batch_size = 128\ndev_limit = 40\ntest_limit = 80")
    small = assets.config_path.with_name("small.toml")
    small.write_text(text)
    return small


def test_seeds_baselines_intervals_and_resume_on_the_demo(small_demo: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    art = tmp_path / "art"

    def cli(*args: str) -> Any:
        return CliRunner().invoke(
            main, ["--db", url, "--artifacts", str(art), *args], catch_exceptions=False
        )

    result = cli("run", str(small_demo), "--seeds", "0,1", "--baselines", "--quiet")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "over seeds 0, 1 (mean ± sd)" in out
    for label in ("global best", "task arithmetic", "DARE-TIES", "greedy soup", "LoraHub"):
        assert label in out
    db, store = Database(url), LocalArtifactStore(art)
    cfg = load_config(small_demo)
    group = seed_group_id(cfg)
    with db.session() as s:
        searches = s.execute(select(SearchRow.seed, SearchRow.id, SearchRow.group_id)).all()
    assert sorted(seed for seed, _, _ in searches) == [0, 1]
    assert {g for _, _, g in searches} == {group}
    ids = {seed: sid for seed, sid, _ in searches}

    for sid in ids.values():
        rows = {r.key: r for r in result_rows(load_record(db, sid))}
        assert set(rows) >= KEYS and any(k.startswith("ensemble_top") for k in rows)
        for key, row in rows.items():
            assert row.dev is not None and row.test is not None, key
            assert (row.interval is None) == (key == "global_best"), key
        assert audit_search(db, store, sid).ok
    page = write_report(db, ids[0], tmp_path / "report").index.read_text()
    assert "DARE-linear" in page and "LoraHub" in page and "paired bootstrap" in page

    # A crash: seed 1's LoraHub stopped after 3 candidates, and seed 2's search after two
    # evaluations. Running the command again continues both and creates nothing twice.
    with db.session() as s:
        n_lorahub = s.scalar(
            select(func.count()).where(
                BaselineRow.search_id == ids[1], BaselineRow.name == "lorahub"
            )
        )
        s.execute(
            delete(BaselineRow).where(
                BaselineRow.search_id == ids[1],
                BaselineRow.name == "lorahub",
                (BaselineRow.trial > 3) | (BaselineRow.trial == 0),
            )
        )
    runner = EmbeddedRunner(Settings(url, art))
    sid2 = create_search(runner.runtime, with_seed(cfg, 2), group_id=group)
    run_evaluation(runner.runtime, sid2, 0, 0)
    run_evaluation(runner.runtime, sid2, 0, 1)

    again = cli("run", str(small_demo), "--seeds", "0,1,2", "--baselines", "--quiet")
    assert again.exit_code == 0, again.output
    assert re.search(r"seed 0: search \w+ found \(completed\)", again.output)
    assert f"seed 2: search {sid2} found (running)" in again.output
    assert "over seeds 0, 1, 2" in again.output
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(SearchRow)) == 3
        assert (
            s.scalar(
                select(func.count()).where(
                    BaselineRow.search_id == ids[1], BaselineRow.name == "lorahub"
                )
            )
            == n_lorahub
        )
        status = s.scalar(select(SearchRow.status).where(SearchRow.id == sid2))
    assert status == "completed"
    assert {r.key for r in result_rows(load_record(db, sid2))} >= KEYS


def test_seed_options_are_checked(small_demo: Path, tmp_path: Path) -> None:
    base = ["--db", f"sqlite:///{tmp_path / 'db.sqlite'}", "--artifacts", str(tmp_path / "a")]
    bad = CliRunner().invoke(main, [*base, "run", str(small_demo), "--seeds", "0,x"])
    assert bad.exit_code == 2 and "give distinct non-negative integers" in bad.output
    twice = CliRunner().invoke(main, [*base, "run", str(small_demo), "--seeds", "1,1"])
    assert twice.exit_code == 2
    alone = CliRunner().invoke(main, [*base, "run", str(small_demo), "--baselines"])
    assert alone.exit_code == 2 and "go with --seeds" in alone.output
