"""The offline demo: its assets, its cache, and its promise (the swarm beats the best expert)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from swarmq.cli import main
from swarmq.demo import build_demo_assets
from swarmq.weights import load_pool


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo") / "cache"


@pytest.mark.slow
def test_demo_assets_and_search(demo_root: Path, tmp_path: Path) -> None:
    assets = build_demo_assets(demo_root)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets.base_model_dir)
    AutoModelForCausalLM.from_pretrained(assets.base_model_dir)
    assert tok("add 3 5 =")["input_ids"][0] == tok.bos_token_id

    pool = load_pool(assets.experts_dir)
    assert len(pool.experts) >= 4
    for i in range(len(pool.vectors)):
        for j in range(i + 1, len(pool.vectors)):
            assert not np.array_equal(pool.vectors[i], pool.vectors[j])
    data = json.loads(assets.dataset_path.read_text())
    assert data["dev"] and data["test"]
    dev_q = {d["question"] for d in data["dev"]}
    assert not dev_q & {d["question"] for d in data["test"]}  # disjoint splits

    again = build_demo_assets(demo_root)
    assert again == assets  # reused: test_demo_assets checks that no file is rewritten

    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    result = CliRunner().invoke(
        main,
        [
            "--db",
            db,
            "--artifacts",
            str(tmp_path / "art"),
            "demo",
            "--cache",
            str(demo_root),
            "--quiet",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(CliRunner().invoke(main, ["--db", db, "status", "--json"]).output)
    status = json.loads(
        CliRunner().invoke(main, ["--db", db, "status", rows[0]["id"], "--json"]).output
    )
    final = status["final"]
    # The demo's promise: the swarm's global best beats the best initial expert on dev.
    assert final["global_best"]["dev"] > final["best_expert"]["dev"]
    assert final["global_best"]["test"] is not None and final["best_expert"]["test"] is not None
    # Experts differ on the target task (each covers a different share of it).
    assert len({h[0] for h in status["utility_histories"][:4]}) > 1
