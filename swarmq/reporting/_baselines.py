"""Baselines of the paper's final table, on the same data and by the same utility as the search.

* every expert on test (so the best single expert can be named on either split);
* the uniform soup: the plain average of the experts' positions;
* the top-k ensemble: the k best personal bests (by dev utility) vote, per example.

They need model evaluations, so they are a separate step (``swarmq baselines SEARCH``) run once
a search is completed. The experts' test scores are ordinary test evaluations of iteration 0
(rows of ``evaluations``, like the search's own final ones); the soup and ensemble scores, which
are no particle's position, go to the ``baselines`` table. A report then renders them without a
model.

The ensemble's vote is :func:`majority_vote`. The reference code breaks a tie with a loop
variable left over from an earlier loop, so its answer depends on iteration order; here the tie
goes to the answer of the best-ranked member among those that gave one of the tied answers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from sqlalchemy import delete, select

from swarmq.engine._common import (
    adapter_config_of,
    config_of,
    last_applied_in_txn,
    layout_of,
    put_vectors_in_txn,
    search_in_txn,
)
from swarmq.engine._evaluate import worker_name
from swarmq.errors import SwarmqError
from swarmq.objectives import Utility, UtilityResult
from swarmq.storage import (
    ArtifactStore,
    BaselineRow,
    Database,
    EvaluationRow,
    ParticleStateRow,
    utcnow,
)

if TYPE_CHECKING:
    from swarmq.config import SearchConfig
    from swarmq.weights import Layout

__all__ = [
    "DEFAULT_TOP_K",
    "TIE_BREAK",
    "BaselineRun",
    "Member",
    "ModelScorer",
    "Scorer",
    "compute_baselines",
    "majority_vote",
    "rank_personal_bests",
]

DEFAULT_TOP_K = 5
TIE_BREAK = (
    "majority vote per example over the members' answers (no answer abstains); a tie goes to "
    "the answer of the best-ranked member among those that gave one of the tied answers; "
    "members are ranked by personal-best dev utility, then by lower particle index"
)


def majority_vote(member_predictions: Sequence[Sequence[str | None]]) -> list[str | None]:
    """Per-example majority vote; ``member_predictions[r]`` is the member of rank ``r`` (0 best).

    ``None`` (the member's output named no answer) abstains; an example where every member
    abstains gets ``None``. Among answers tied for the most votes, the answer of the
    best-ranked member that gave one of them wins: a deterministic rule that rewards dev
    utility, unlike the reference code's stale loop variable.
    """
    if not member_predictions:
        raise SwarmqError("an ensemble needs at least one member")
    lengths = {len(p) for p in member_predictions}
    if len(lengths) != 1:
        raise SwarmqError(f"ensemble members answered different numbers of examples: {lengths}")
    votes: list[str | None] = []
    for answers in zip(*member_predictions, strict=True):
        counts = Counter(a for a in answers if a is not None)
        if not counts:
            votes.append(None)
            continue
        top = max(counts.values())
        tied = {a for a, c in counts.items() if c == top}
        # Members are in rank order, so the first member holding a tied answer is the best.
        votes.append(next(a for a in answers if a in tied))
    return votes


@dataclass(frozen=True)
class Member:
    """A personal best chosen for the ensemble, by rank (0 = best dev utility)."""

    rank: int
    particle: int
    iteration: int
    position_hash: str
    dev_utility: float


def rank_personal_bests(bests: Sequence[tuple[int, int, str, float]], k: int) -> list[Member]:
    """The top ``k`` distinct personal bests from ``(particle, iteration, hash, dev utility)``.

    Ordered by dev utility (highest first), then by lower particle index. Two particles whose
    personal best is the same position (same hash) count once: an identical model would only
    double its own vote.
    """
    if k < 1:
        raise SwarmqError(f"top-k needs k >= 1, got {k}")
    members: list[Member] = []
    seen: set[str] = set()
    for particle, iteration, digest, utility in sorted(bests, key=lambda b: (-b[3], b[0])):
        if digest in seen:
            continue
        seen.add(digest)
        members.append(Member(len(members), particle, iteration, digest, float(utility)))
        if len(members) == k:
            break
    return members


class Scorer(Protocol):
    """How baselines score a position: the search's utility on one split of its dataset."""

    def check_ensemble(self) -> None:
        """Raise :class:`UtilityError` when the utility gives no per-example answers."""

    def score(self, vector: np.ndarray, split: str) -> UtilityResult:
        """The utility of a position on ``split``."""

    def predict(self, vector: np.ndarray, split: str) -> list[str | None]:
        """The per-example answers of a position on ``split``."""

    def score_predictions(self, predictions: Sequence[str | None], split: str) -> UtilityResult:
        """The utility of given per-example answers on ``split``."""


class ModelScorer:
    """A :class:`Scorer` over the search's base model and objective (loads the model once)."""

    def __init__(
        self, config: SearchConfig, adapter_config: Mapping[str, Any] | None, layout: Layout
    ) -> None:
        from swarmq.modeling import get_evaluator

        self._evaluator = get_evaluator(config, adapter_config)
        self._layout = layout

    @property
    def _utility(self) -> Utility:
        return self._evaluator.utility

    def check_ensemble(self) -> None:
        # Asks the utility itself: support can depend on its options (a probability score
        # has no answer to vote on), and it must be refused before any evaluation runs.
        self._utility.check_predictions()

    def score(self, vector: np.ndarray, split: str) -> UtilityResult:
        return self._evaluator.evaluate(self._layout, vector, split)  # type: ignore[arg-type]

    def predict(self, vector: np.ndarray, split: str) -> list[str | None]:
        examples = self._evaluator.examples(split)  # type: ignore[arg-type]
        self._evaluator.set_position(self._layout, vector)
        return self._utility.predict(self._evaluator, examples)

    def score_predictions(self, predictions: Sequence[str | None], split: str) -> UtilityResult:
        return self._utility.score_predictions(
            predictions,
            self._evaluator.examples(split),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class BaselineRun:
    """What :func:`compute_baselines` evaluated (names of the scores it wrote)."""

    expert_tests: tuple[int, ...]
    baselines: tuple[str, ...]
    skipped: tuple[str, ...]


@dataclass(frozen=True)
class _Inputs:
    status: str
    n_experts: int
    experts: list[tuple[int, str]]  # (particle, position hash) at iteration 0
    expert_tests_done: set[int]
    bests: list[tuple[int, int, str, float]]
    last_applied: int
    existing: set[tuple[str, str]]
    config_json: str
    layout_json: str
    adapter_json: str | None


def _inputs(db: Database, search_id: str) -> _Inputs:
    with db.session() as s:
        search = search_in_txn(s, search_id)
        applied = last_applied_in_txn(s, search_id)
        last = None if applied is None else applied.number
        experts = [
            (int(p), str(h))
            for p, h in s.execute(
                select(ParticleStateRow.particle, ParticleStateRow.position_hash)
                .where(
                    ParticleStateRow.search_id == search_id,
                    ParticleStateRow.iteration == 0,
                    ParticleStateRow.particle < search.n_experts,
                )
                .order_by(ParticleStateRow.particle)
            ).all()
        ]
        done = {
            int(p)
            for (p,) in s.execute(
                select(EvaluationRow.particle).where(
                    EvaluationRow.search_id == search_id,
                    EvaluationRow.iteration == 0,
                    EvaluationRow.split == "test",
                    EvaluationRow.status == "done",
                )
            ).all()
        }
        bests: list[tuple[int, int, str, float]] = []
        if last is not None:
            for particle, iteration, digest, utility in s.execute(
                select(
                    ParticleStateRow.particle,
                    ParticleStateRow.best_iteration,
                    ParticleStateRow.best_hash,
                    ParticleStateRow.best_utility,
                )
                .where(ParticleStateRow.search_id == search_id, ParticleStateRow.iteration == last)
                .order_by(ParticleStateRow.particle)
            ).all():
                if digest is not None and utility is not None and iteration is not None:
                    bests.append((int(particle), int(iteration), str(digest), float(utility)))
        existing = {
            (str(n), str(sp))
            for n, sp in s.execute(
                select(BaselineRow.name, BaselineRow.split).where(
                    BaselineRow.search_id == search_id
                )
            ).all()
        }
        return _Inputs(
            search.status,
            search.n_experts,
            experts,
            done,
            bests,
            -1 if last is None else int(last),
            existing,
            search.config_json,
            search.layout_json,
            search.adapter_config_json,
        )


def _record_expert_test(
    db: Database,
    search_id: str,
    particle: int,
    digest: str,
    result: UtilityResult,
    worker: str,
    started: Any,
) -> None:
    with db.session() as s:
        row = s.scalars(
            select(EvaluationRow)
            .where(
                EvaluationRow.search_id == search_id,
                EvaluationRow.iteration == 0,
                EvaluationRow.particle == particle,
                EvaluationRow.split == "test",
            )
            .with_for_update()
        ).one_or_none()
        if row is None:
            row = EvaluationRow(
                search_id=search_id,
                iteration=0,
                particle=particle,
                split="test",
                position_hash=digest,
                attempts=0,
            )
            s.add(row)
        elif row.status == "done":
            return  # someone else recorded it meanwhile; the value is the same function's
        row.status, row.utility, row.metrics = "done", result.value, dict(result.metrics)
        row.attempts = (row.attempts or 0) + 1
        row.worker, row.started_at, row.finished_at, row.error = worker, started, utcnow(), None


def _record_baseline(
    db: Database,
    search_id: str,
    name: str,
    split: str,
    result: UtilityResult,
    *,
    position_hash: str | None,
    metrics: dict[str, Any],
    worker: str,
    started: Any,
) -> None:
    with db.session() as s:
        s.execute(
            delete(BaselineRow).where(
                BaselineRow.search_id == search_id,
                BaselineRow.name == name,
                BaselineRow.split == split,
            )
        )
        s.add(
            BaselineRow(
                search_id=search_id,
                name=name,
                split=split,
                utility=result.value,
                position_hash=position_hash,
                metrics={**dict(result.metrics), **metrics},
                worker=worker,
                started_at=started,
                finished_at=utcnow(),
            )
        )


def compute_baselines(
    db: Database,
    store: ArtifactStore,
    search_id: str,
    *,
    top_k: int = DEFAULT_TOP_K,
    scorer: Scorer | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> BaselineRun:
    """Evaluate and record the baselines of a completed search; returns what was computed.

    Scores already recorded are kept unless ``force`` (the experts' test evaluations are the
    search's own record and are never recomputed). ``scorer`` defaults to the search's base
    model and objective (:class:`ModelScorer`); tests pass a closed-form one.
    """
    say = progress or (lambda _msg: None)
    inp = _inputs(db, search_id)
    if inp.status != "completed":
        raise SwarmqError(
            f"search {search_id!r} is {inp.status}; baselines are computed on a completed "
            "search (its personal bests are final then)"
        )
    if len(inp.experts) != inp.n_experts or not inp.bests:
        raise SwarmqError(f"search {search_id!r} has an incomplete record at iteration 0")
    if scorer is None:
        scorer = ModelScorer(
            config_of(inp.config_json),
            adapter_config_of(inp.adapter_json),
            layout_of(inp.layout_json),
        )
    members = rank_personal_bests(inp.bests, top_k)
    ensemble = f"ensemble_top{len(members)}"
    want_ensemble = force or any((ensemble, sp) not in inp.existing for sp in ("dev", "test"))
    if want_ensemble:
        scorer.check_ensemble()  # before any evaluation: fail fast on e.g. a reward utility
    worker = worker_name()
    vectors = {p: store.get_vector(h) for p, h in inp.experts}

    tested: list[int] = []
    for particle, digest in inp.experts:
        if particle in inp.expert_tests_done:
            continue
        say(f"expert {particle} on test")
        started = utcnow()
        result = scorer.score(vectors[particle], "test")
        _record_expert_test(db, search_id, particle, digest, result, worker, started)
        tested.append(particle)

    written: list[str] = []
    skipped: list[str] = []
    # The soup is the plain mean, summed in float64 in expert order so it is reproducible.
    soup = np.sum([vectors[p] for p, _ in inp.experts], axis=0, dtype=np.float64) / len(vectors)
    soup32 = np.asarray(soup, dtype=np.float32)
    soup_hash: str | None = None
    for split in ("dev", "test"):
        if not force and ("uniform_soup", split) in inp.existing:
            skipped.append(f"uniform_soup/{split}")
            continue
        if soup_hash is None:
            with db.session() as s:
                (soup_hash,) = put_vectors_in_txn(s, store, [("position", soup32)])
        say(f"uniform soup on {split}")
        started = utcnow()
        result = scorer.score(soup32, split)
        _record_baseline(
            db,
            search_id,
            "uniform_soup",
            split,
            result,
            position_hash=soup_hash,
            metrics={"experts": [h for _, h in inp.experts]},
            worker=worker,
            started=started,
        )
        written.append(f"uniform_soup/{split}")

    if not want_ensemble:
        skipped += [f"{ensemble}/dev", f"{ensemble}/test"]
        return BaselineRun(tuple(tested), tuple(written), tuple(skipped))
    member_vectors = {m.position_hash: store.get_vector(m.position_hash) for m in members}
    for split in ("dev", "test"):
        say(f"{ensemble} on {split} ({len(members)} members)")
        started = utcnow()
        predictions = [scorer.predict(member_vectors[m.position_hash], split) for m in members]
        votes = majority_vote(predictions)
        result = scorer.score_predictions(votes, split)
        member_scores = [scorer.score_predictions(p, split).value for p in predictions]
        _record_baseline(
            db,
            search_id,
            ensemble,
            split,
            result,
            position_hash=None,
            metrics={
                "k": len(members),
                "k_requested": top_k,
                "from_iteration": inp.last_applied,
                "tie_break": TIE_BREAK,
                "members": [
                    {
                        "rank": m.rank,
                        "particle": m.particle,
                        "iteration": m.iteration,
                        "position_hash": m.position_hash,
                        # The recorded personal best, and the member's own score on this
                        # split from the answers below (on dev the two must agree).
                        "dev_utility": m.dev_utility,
                        "utility": score,
                    }
                    for m, score in zip(members, member_scores, strict=True)
                ],
                # Every answer, so the vote can be recounted from the record.
                "member_predictions": predictions,
                "predictions": votes,
            },
            worker=worker,
            started=started,
        )
        written.append(f"{ensemble}/{split}")
    return BaselineRun(tuple(tested), tuple(written), tuple(skipped))
