"""Reports, baselines, history and exports.

Most tests run a search on the engine with a closed-form "classifier" utility: a position
answers example j with the sign of one of its coordinates. The baselines are computed with the
same closed form, so every number of the final table can be checked by hand. One test runs the
whole command line on the tiny language model.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from searches import SignScorer, sign_config, sign_pool, sign_utility
from sqlalchemy import select

from swarmq.cli import main
from swarmq.engine import (
    TIE_BREAK,
    compute_baselines,
    create_search,
    majority_vote,
    rank_personal_bests,
    run_evaluation,
    utility_histories,
)
from swarmq.errors import NotFoundError, SwarmqError, UtilityError
from swarmq.execution import EmbeddedRunner
from swarmq.objectives import ExactMatch, MultipleChoice, Utility, UtilityResult
from swarmq.reporting import (
    HISTORY_FIELDS,
    composition,
    history_document,
    history_rows,
    load_record,
    render_html,
    result_rows,
    write_csv,
    write_report,
)
from swarmq.settings import Settings
from swarmq.storage import BaselineRow, Database, EvaluationRow, ParticleStateRow

# ------------------------------------------------------------------------- the majority vote


def test_majority_vote_plain_majority() -> None:
    members = [["A", "B", "C"], ["B", "B", "C"], ["B", "A", "D"]]
    assert majority_vote(members) == ["B", "B", "C"]


def test_majority_vote_tie_goes_to_the_best_ranked_member() -> None:
    # Example 0: A and B tie 2-2; member 0 (best) said A.   -> A
    # Example 1: A and B tie 2-2; member 0 said C (not tied), member 1 said B -> B
    # Example 2: three-way 1-1-1 tie; member 0 said D.       -> D
    # Example 3: the tie is decided by rank even when the worse members come first in the
    #            alphabet or in count order.                 -> Z
    members = [
        ["A", "C", "D", "Z"],
        ["B", "B", "E", "A"],
        ["A", "A", "F", "A"],
        ["B", "A", None, "Z"],
        [None, "B", None, None],
    ]
    assert majority_vote(members) == ["A", "B", "D", "Z"]


def test_majority_vote_abstentions() -> None:
    # None abstains: one real answer beats two abstentions; all abstain -> None.
    assert majority_vote([[None, None], [None, "C"], [None, None]]) == [None, "C"]
    # A single member is its own vote.
    assert majority_vote([["A", None, "B"]]) == ["A", None, "B"]


def test_majority_vote_refuses_bad_input() -> None:
    with pytest.raises(SwarmqError, match="at least one member"):
        majority_vote([])
    with pytest.raises(SwarmqError, match="different numbers"):
        majority_vote([["A"], ["A", "B"]])


def test_rank_personal_bests() -> None:
    bests = [
        (0, 3, "h0", 0.5),
        (1, 1, "h1", 0.7),
        (2, 2, "h2", 0.7),  # ties 0.7 with particle 1: lower index first
        (3, 5, "h1", 0.7),  # the same position as particle 1's: counted once
        (4, 0, "h4", 0.1),
    ]
    ranked = rank_personal_bests(bests, 3)
    assert [(m.rank, m.particle, m.position_hash) for m in ranked] == [
        (0, 1, "h1"),
        (1, 2, "h2"),
        (2, 0, "h0"),
    ]
    assert len(rank_personal_bests(bests, 99)) == 4
    with pytest.raises(SwarmqError, match="k >= 1"):
        rank_personal_bests(bests, 0)


# ------------------------------------------------------------------- utilities' predictions


class FakeGenerator:
    def __init__(self, outputs: Sequence[str]) -> None:
        self.outputs = list(outputs)

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        return self.outputs[: len(prompts)]


def test_multiple_choice_predictions_match_score() -> None:
    choices = {"A": "red", "B": "blue", "C": "green"}
    examples = [{"question": f"q{i}", "choices": choices, "answer": "B"} for i in range(4)]
    gen = FakeGenerator([" B", " the answer is blue", " nothing", "A: red"])
    utility = MultipleChoice()
    predictions = utility.predict(gen, examples)
    assert predictions == ["B", "B", None, "A"]
    scored = utility.score_predictions(predictions, examples)
    assert scored.value == utility.score(gen, examples).value == 0.5
    assert scored.metrics["unparsed"] == 1
    with pytest.raises(UtilityError, match="3 predictions for 4"):
        utility.score_predictions(predictions[:3], examples)


def test_exact_match_predictions_match_score() -> None:
    examples = [{"question": "1+1", "answer": "2"}, {"question": "2+2", "answer": "4"}]
    gen = FakeGenerator(["  so it is 2 ", "   "])
    utility = ExactMatch()
    predictions = utility.predict(gen, examples)
    assert predictions == ["so it is 2", None]
    assert utility.score_predictions(predictions, examples).value == 0.5
    assert utility.score(gen, examples).value == 0.5


def test_utility_without_predictions_refuses_ensembles() -> None:
    class Rating(Utility):
        def score(self, generator: Any, examples: Sequence[Mapping[str, Any]]) -> UtilityResult:
            return UtilityResult(1.0)

    with pytest.raises(UtilityError, match="cannot be ensembled"):
        Rating().predict(FakeGenerator([]), [])
    with pytest.raises(UtilityError, match="cannot score"):
        Rating().score_predictions([], [])


# ------------------------------------------------------------- a search with a closed form

# SignScorer, sign_utility, sign_pool and sign_config live in searches.py (shared with the
# baselines tests).


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[EmbeddedRunner, str, Path]:
    root = tmp_path_factory.mktemp("searched")
    runner = EmbeddedRunner(
        Settings(f"sqlite:///{root / 'db.sqlite'}", root / "art"), evaluate=sign_utility
    )
    sid = create_search(
        runner.runtime, sign_config(sign_pool(root / "pool")), check_objective=False
    )
    runner.drive(sid)
    return runner, sid, root


def test_record_matches_the_engine_views(searched: tuple[EmbeddedRunner, str, Path]) -> None:
    runner, sid, _ = searched
    rec = load_record(runner.runtime.db, sid)
    hist = utility_histories(runner.runtime.db, sid)
    assert rec.utility.shape == (len(hist[0]), 8)
    assert rec.utility.T.tolist() == hist
    assert rec.status == "completed" and rec.n_experts == 4
    assert rec.iterations[0].step_length is None and rec.iterations[1].step_length == 1.0
    assert rec.restarted.any(), "the test search should exercise restarts"
    # Personal best utility never decreases, per particle.
    assert np.all(np.diff(rec.best_utility, axis=0) >= 0)
    assert len(rec.timings) >= rec.utility.size - (rec.evaluated == 0).sum()


def test_composition_by_hand() -> None:
    from swarmq.reporting._record import ParticleInfo

    particles = (
        ParticleInfo(0, "e0", None, None, None),
        ParticleInfo(1, "e1", None, None, None),
        ParticleInfo(2, None, 0, 1, 0.25),  # 0.25 e0 + 0.75 e1
        ParticleInfo(3, None, 2, 0, 1.5),  # 1.5 p2 - 0.5 e0 = -0.125 e0 + 1.125 e1
    )
    np.testing.assert_allclose(
        composition(particles, 2), [[1, 0], [0, 1], [0.25, 0.75], [-0.125, 1.125]]
    )
    assert particles[3].describe() == "1.500·P2 + -0.500·P0"


def test_report_files(searched: tuple[EmbeddedRunner, str, Path], tmp_path: Path) -> None:
    runner, sid, _ = searched
    out = tmp_path / "report"
    result = write_report(runner.runtime.db, sid, out)
    page = result.index.read_text()
    assert result.index == out / "index.html"
    for fig in result.figures:
        assert fig.parent == out and fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="{fig.name}"' in page
    assert len(result.figures) == 6
    # Self-contained: nothing is fetched from elsewhere.
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert sid in page and "global best (particle" in page and "best initial expert" in page
    assert f"swarmq baselines {sid}" in page  # baselines not computed yet: says how
    summary = json.loads((out / "summary.json").read_text())
    rec = load_record(runner.runtime.db, sid)
    assert summary["global_best"] == [it.best_utility for it in rec.applied]
    assert summary["restarts"] == rec.restarted.sum(axis=1).tolist()
    # Writing again into the same folder replaces the report.
    write_report(runner.runtime.db, sid, out)


def test_report_shows_record_strings_as_text(
    searched: tuple[EmbeddedRunner, str, Path],
) -> None:
    runner, sid, _ = searched
    rec = load_record(runner.runtime.db, sid)
    hostile = dataclasses.replace(
        rec, name="<script>alert(1)</script>", stop_reason='a < b & "[bold]c"'
    )
    page = render_html(hostile, [])
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a &lt; b &amp; &#34;[bold]c&#34;" in page


def test_report_of_a_fresh_search(tmp_path: Path) -> None:
    runner = EmbeddedRunner(
        Settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art"), evaluate=sign_utility
    )
    sid = create_search(
        runner.runtime, sign_config(sign_pool(tmp_path / "pool")), check_objective=False
    )
    run_evaluation(runner.runtime, sid, 0, 0)  # one evaluation in, nothing applied
    result = write_report(runner.runtime.db, sid, tmp_path / "r")
    assert "running" in result.index.read_text()
    assert len(result.figures) == 6
    with pytest.raises(NotFoundError):
        write_report(runner.runtime.db, "nope", tmp_path / "r2")


def test_baselines_by_hand(searched: tuple[EmbeddedRunner, str, Path], tmp_path: Path) -> None:
    runner, sid, _ = searched
    db, store = runner.runtime.db, runner.runtime.store
    scorer = SignScorer()
    run = compute_baselines(
        db, store, sid, top_k=3, scorer=scorer, only=("uniform_soup", "ensemble")
    )
    assert run.baselines == (
        "uniform_soup/dev",
        "uniform_soup/test",
        "ensemble_top3/dev",
        "ensemble_top3/test",
    )
    with db.session() as s:
        experts = [
            store.get_vector(st.position_hash)
            for st in s.scalars(
                select(ParticleStateRow)
                .where(ParticleStateRow.search_id == sid, ParticleStateRow.iteration == 0)
                .order_by(ParticleStateRow.particle)
                .limit(4)
            )
        ]
        tests = {
            e.particle: e.utility
            for e in s.scalars(
                select(EvaluationRow).where(
                    EvaluationRow.search_id == sid,
                    EvaluationRow.iteration == 0,
                    EvaluationRow.split == "test",
                )
            )
        }
        rows = {
            (b.name, b.split): b
            for b in s.scalars(select(BaselineRow).where(BaselineRow.search_id == sid))
        }
    # Every expert now has a test score, computed by the same utility.
    assert tests == {k: SignScorer().score(experts[k], "test").value for k in range(4)}
    # The soup is the plain mean of the experts' recorded positions.
    soup = (np.sum(experts, axis=0, dtype=np.float64) / 4).astype(np.float32)
    for split in ("dev", "test"):
        assert rows[("uniform_soup", split)].utility == SignScorer().score(soup, split).value
    assert rows[("uniform_soup", "dev")].position_hash == store.put_vector(soup)

    dev = rows[("ensemble_top3", "dev")].metrics
    test = rows[("ensemble_top3", "test")].metrics
    assert dev is not None and test is not None and dev["tie_break"] == TIE_BREAK
    members = dev["members"]
    assert [m["rank"] for m in members] == [0, 1, 2]
    # Members are the best personal bests: dev utilities non-increasing, each the particle's.
    assert [m["dev_utility"] for m in members] == sorted(
        (m["dev_utility"] for m in members), reverse=True
    )
    for split, metrics in (("dev", dev), ("test", test)):
        vectors = [store.get_vector(m["position_hash"]) for m in members]
        answers = [SignScorer().predict(v, split) for v in vectors]
        assert metrics["member_predictions"] == answers
        assert metrics["predictions"] == majority_vote(answers)
        votes = metrics["predictions"]
        assert rows[("ensemble_top3", split)].utility == sum(a == "A" for a in votes) / 6
    # Replaying a member's answers gives its recorded dev utility back.
    assert all(m["utility"] == m["dev_utility"] for m in members)

    table = {r.label.split(" (")[0]: r for r in result_rows(load_record(db, sid))}
    oracle = table["best single expert on test, oracle"]
    assert oracle.test == max(tests.values())
    assert table["uniform soup"].dev == rows[("uniform_soup", "dev")].utility
    ensemble = table["top-3 ensemble of personal bests"]
    assert ensemble.test == rows[("ensemble_top3", "test")].utility
    assert table["best initial expert, chosen on dev"].test is not None

    # Recorded scores are kept: a second run evaluates nothing; --force recomputes.
    scorer.calls.clear()
    only = ("uniform_soup", "ensemble")
    again = compute_baselines(db, store, sid, top_k=3, scorer=scorer, only=only)
    assert again.baselines == () and again.expert_tests == () and scorer.calls == []
    forced = compute_baselines(db, store, sid, top_k=3, scorer=scorer, force=True, only=only)
    assert len(forced.baselines) == 4

    # The report renders them without a model.
    page = write_report(db, sid, tmp_path / "r").index.read_text()
    assert "uniform soup" in page and "top-3 ensemble" in page and "Tie-break" in page


def test_baselines_refusals(tmp_path: Path) -> None:
    runner = EmbeddedRunner(
        Settings(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "art"), evaluate=sign_utility
    )
    rt = runner.runtime
    sid = create_search(rt, sign_config(sign_pool(tmp_path / "pool")), check_objective=False)
    with pytest.raises(SwarmqError, match="is running; baselines are computed on a completed"):
        compute_baselines(rt.db, rt.store, sid, scorer=SignScorer())
    runner.drive(sid)
    scorer = SignScorer(ensembles=False)
    with pytest.raises(UtilityError, match="no per-example answers"):
        compute_baselines(rt.db, rt.store, sid, scorer=scorer)
    assert scorer.calls == []  # refused before any evaluation


# --------------------------------------------------------------------------------- history


def test_history_rows_csv_json(searched: tuple[EmbeddedRunner, str, Path]) -> None:
    runner, sid, _ = searched
    db = runner.runtime.db
    rec = load_record(db, sid)
    rows = list(history_rows(db, sid))
    assert len(rows) == rec.utility.size
    assert [(r["iteration"], r["particle"]) for r in rows[:9]] == [
        *((0, i) for i in range(8)),
        (1, 0),
    ]
    with db.session() as s:
        st = s.get(ParticleStateRow, (sid, 3, 5))
        assert st is not None and st.update is not None
    row = next(r for r in rows if (r["iteration"], r["particle"]) == (3, 5))
    assert [row[k] for k in ("r_v", "r_p", "r_g", "r_w")] == st.update["factors"]
    assert [row[k] for k in ("x", "v", "p", "g", "g_worst")] == [
        st.update[k] for k in ("x", "v", "p", "g", "g_worst")
    ]
    assert row["utility"] == st.utility and row["restarted"] == st.restarted
    assert rows[0]["initial_velocity"] == "random" and rows[0]["r_v"] is None

    buffer = io.StringIO()
    assert write_csv(iter(rows), buffer) == len(rows)
    parsed = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert list(parsed[0]) == list(HISTORY_FIELDS)
    back = next(r for r in parsed if (r["iteration"], r["particle"]) == ("3", "5"))
    assert float(back["r_p"]) == st.update["factors"][1]  # floats round-trip exactly

    one = list(history_rows(db, sid, particle=5))
    assert len(one) == rec.n_iterations and {r["particle"] for r in one} == {5}
    doc = history_document(db, sid, particle=5)
    assert doc["search"] == sid and len(doc["states"]) == rec.n_iterations
    assert doc["particles"][0]["particle"] == 5 and len(doc["iterations"]) == rec.n_iterations
    with pytest.raises(NotFoundError, match=r"particles 0\.\.7, not 8"):
        list(history_rows(db, sid, particle=8))


def test_history_cli(searched: tuple[EmbeddedRunner, str, Path], tmp_path: Path) -> None:
    runner, sid, root = searched
    base = ["--db", f"sqlite:///{root / 'db.sqlite'}", "--artifacts", str(root / "art")]
    table = CliRunner().invoke(main, [*base, "history", sid, "--particle", "2"])
    assert table.exit_code == 0, table.output
    assert "history" in table.output and "initial (random)" in table.output
    out = tmp_path / "h.csv"
    result = CliRunner().invoke(main, [*base, "history", sid, "--format", "csv", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 1 + load_record(runner.runtime.db, sid).utility.size
    as_json = CliRunner().invoke(main, [*base, "history", sid, "--format", "json"])
    assert json.loads(as_json.output)["search"] == sid


# --------------------------------------------------------- the command line on a real model


def test_cli_baselines_report_and_exports(
    tmp_path: Path, write_config: Callable[..., Path], tiny_world: dict[str, Path]
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    def cli(*args: str) -> Any:
        return CliRunner().invoke(
            main,
            [
                "--db",
                f"sqlite:///{tmp_path / 'db.sqlite'}",
                "--artifacts",
                str(tmp_path / "a"),
                *args,
            ],
            catch_exceptions=False,
        )

    assert cli("run", str(write_config(search={"max_iterations": 2})), "--quiet").exit_code == 0
    sid = json.loads(cli("status", "--json").output)[0]["id"]

    result = cli("baselines", sid, "--top-k", "3", "--only", "uniform_soup,ties,ensemble")
    assert result.exit_code == 0, result.output
    assert "uniform soup" in result.output and "top-3 ensemble" in result.output
    assert "TIES (peft ties" in result.output and "95% CI" in result.output
    db_rows = load_record(Database(f"sqlite:///{tmp_path / 'db.sqlite'}"), sid)
    ensemble = next(b for b in db_rows.baselines if b.name == "ensemble_top3" and b.split == "dev")
    # On the real model too, a member's replayed answers give its recorded dev utility.
    assert all(m["utility"] == m["dev_utility"] for m in ensemble.metrics["members"])
    assert len(result_rows(db_rows)) == 6
    assert all(r.interval is not None for r in result_rows(db_rows) if r.key != "global_best")
    bad = cli("baselines", sid, "--only", "soup")
    assert bad.exit_code == 2 and "'soup' is not a baseline" in bad.output

    # The search on the real model (and the expert test evaluations just added) audits clean.
    result = cli("audit", sid, "--check-experts", "--quiet")
    assert result.exit_code == 0, result.output

    # --baselines keeps the recorded scores (nothing to evaluate again), then writes the report.
    result = cli("report", sid, "--out", str(tmp_path / "report"), "--baselines", "--top-k", "3")
    assert result.exit_code == 0, result.output
    assert "uniform soup" in (tmp_path / "report" / "index.html").read_text()

    result = cli("export", sid, "--out", str(tmp_path / "p2"), "--particle", "2")
    assert result.exit_code == 0, result.output
    assert "personal best of particle 2" in result.output

    adapter, merged = tmp_path / "best", tmp_path / "merged"
    assert cli("export", sid, "--out", str(adapter)).exit_code == 0
    result = cli("export", sid, "--out", str(merged), "--merged")
    assert result.exit_code == 0, result.output
    assert (merged / "model.safetensors").is_file() and (merged / "tokenizer.json").is_file()
    provenance = json.loads((merged / "swarmq_export.json").read_text())
    assert provenance["swarmq_position_hash"] and "swarmq_search" not in provenance
    # The merged model computes what the base model with the adapter computes.
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_world["base"]), adapter
    )
    full = AutoModelForCausalLM.from_pretrained(merged)
    assert not any("lora" in name for name, _ in full.named_parameters())
    tokens = torch.tensor([[2, 5, 7, 9, 11, 4]])
    with torch.no_grad():
        torch.testing.assert_close(
            full(tokens).logits, peft_model(tokens).logits, rtol=1e-4, atol=1e-5
        )
    # An earlier merged export may be replaced; an unrelated non-empty folder is refused.
    assert cli("export", sid, "--out", str(merged), "--merged").exit_code == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    refused = CliRunner().invoke(
        main,
        [
            "--db",
            f"sqlite:///{tmp_path / 'db.sqlite'}",
            "--artifacts",
            str(tmp_path / "a"),
            "export",
            sid,
            "--out",
            str(tmp_path / "other"),
            "--merged",
        ],
    )
    assert refused.exit_code == 2 and "not empty" in refused.output
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
