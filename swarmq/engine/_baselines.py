"""Baselines of the paper's final table, on the same data and by the same utility as the search.

``swarmq baselines SEARCH`` evaluates, on dev and test, beside the swarm's global best:

* every expert on test (so the best single expert can be named on either split);
* the uniform soup: the plain average of the experts' positions;
* task arithmetic, TIES, DARE-TIES and DARE-linear: peft's merges (``add_weighted_adapter`` for
  a LoRA pool; see :mod:`swarmq.modeling._merge`), the experts' common weight chosen on dev;
* the greedy soup (Wortsman et al.): experts added in order of dev utility while dev does not
  drop;
* LoraHub: one weight per expert, searched by CMA-ES on dev with as many dev evaluations as
  the swarm made;
* the top-k ensemble: the k best personal bests (by dev utility) vote, per example.

They need model evaluations, so they run where a model is (this process, with the search's
base model). The experts' test scores are ordinary test evaluations of iteration 0 (rows of
``evaluations``, like the search's own final ones); every other evaluation is a row of the
``baselines`` table with its position in the artifact store, its worker and times, its metrics
and its per-item scores: trial 0 is a baseline's result on a split, trials 1, 2, ... the
candidates a baseline evaluated on dev while choosing. A report then renders them without a
model, and ``swarmq audit`` checks them.

Every choice is a function of the search's seed and of recorded dev utilities, so a rerun
after a crash replays the recorded trials (checking that each candidate is the recorded
position) and evaluates only what is missing.

The ensemble's vote is :func:`majority_vote`. The reference code breaks a tie with a loop
variable left over from an earlier loop, so its answer depends on iteration order; here the tie
goes to the answer of the best-ranked member among those that gave one of the tied answers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from sqlalchemy import delete, func, select

from swarmq.engine._common import (
    adapter_config_of,
    config_of,
    last_applied_in_txn,
    layout_of,
    put_vectors_in_txn,
    search_in_txn,
)
from swarmq.engine._leases import worker_name
from swarmq.engine._soups import (
    derived_seed,
    greedy_soup,
    lorahub_search,
    mean_position,
    merge_scales,
    weighted_position,
)
from swarmq.errors import LayoutError, ModelError, SwarmqError
from swarmq.objectives import Utility, UtilityResult
from swarmq.storage import (
    ArtifactStore,
    BaselineRow,
    Database,
    EvaluationRow,
    ParticleStateRow,
    encode_item_scores,
    utcnow,
)

if TYPE_CHECKING:
    from swarmq.config import SearchConfig
    from swarmq.weights import Layout

__all__ = [
    "BASELINES",
    "DEFAULT_DENSITY",
    "DEFAULT_TOP_K",
    "MERGES",
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
#: Fraction of entries TIES and DARE keep (peft's ``density``).
DEFAULT_DENSITY = 0.5
#: The peft merges, in the order they are computed.
MERGES = ("task_arithmetic", "ties", "dare_ties", "dare_linear")
#: Every baseline ``swarmq baselines`` computes (``--only`` picks some), in order.
BASELINES = ("uniform_soup", *MERGES, "greedy_soup", "lorahub", "ensemble")
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
    """How baselines score and merge positions: the search's utility on one split of its
    dataset, and peft's merges of its pool."""

    def check_ensemble(self) -> None:
        """Raise :class:`UtilityError` when the utility gives no per-example answers."""

    def score(self, vector: np.ndarray, split: str) -> UtilityResult:
        """The utility of a position on ``split`` (with its per-item scores)."""

    def predict(self, vector: np.ndarray, split: str) -> list[str | None]:
        """The per-example answers of a position on ``split``."""

    def score_predictions(self, predictions: Sequence[str | None], split: str) -> UtilityResult:
        """The utility of given per-example answers on ``split``."""

    def merge(
        self,
        method: str,
        vectors: Sequence[np.ndarray],
        weights: Sequence[float],
        density: float,
        seed: int,
    ) -> np.ndarray:
        """peft's merge ``method`` (one of :data:`MERGES`) of positions; raises
        :class:`ModelError` when the pool cannot be merged that way."""


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

    def merge(
        self,
        method: str,
        vectors: Sequence[np.ndarray],
        weights: Sequence[float],
        density: float,
        seed: int,
    ) -> np.ndarray:
        return self._evaluator.merge(self._layout, vectors, weights, method, density, seed)


@dataclass(frozen=True)
class BaselineRun:
    """What :func:`compute_baselines` did: experts evaluated on test, results written
    (``name/split``), baselines kept as recorded, and baselines that could not be computed
    for this pool or utility (``name: reason``)."""

    expert_tests: tuple[int, ...]
    baselines: tuple[str, ...]
    skipped: tuple[str, ...]
    unavailable: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Inputs:
    status: str
    seed: int
    n_experts: int
    experts: list[tuple[int, str]]  # (particle, position hash) at iteration 0
    expert_names: list[str]
    expert_dev: dict[int, float]  # dev utility of each expert at iteration 0
    expert_tests_done: set[int]
    bests: list[tuple[int, int, str, float]]
    last_applied: int
    dev_evaluations: int
    config_json: str
    layout_json: str
    adapter_json: str | None


def _inputs(db: Database, search_id: str) -> _Inputs:
    from swarmq.storage import ParticleRow

    with db.session() as s:
        search = search_in_txn(s, search_id)
        applied = last_applied_in_txn(s, search_id)
        last = None if applied is None else applied.number
        states = s.execute(
            select(
                ParticleStateRow.particle, ParticleStateRow.position_hash, ParticleStateRow.utility
            )
            .where(
                ParticleStateRow.search_id == search_id,
                ParticleStateRow.iteration == 0,
                ParticleStateRow.particle < search.n_experts,
            )
            .order_by(ParticleStateRow.particle)
        ).all()
        names = {
            int(i): str(n or f"expert {i}")
            for i, n in s.execute(
                select(ParticleRow.index, ParticleRow.expert_name).where(
                    ParticleRow.search_id == search_id, ParticleRow.index < search.n_experts
                )
            ).all()
        }
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
        dev_evaluations = int(
            s.scalar(
                select(func.count())
                .select_from(EvaluationRow)
                .where(
                    EvaluationRow.search_id == search_id,
                    EvaluationRow.split == "dev",
                    EvaluationRow.status == "done",
                )
            )
            or 0
        )
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
        return _Inputs(
            status=search.status,
            seed=int(search.seed),
            n_experts=search.n_experts,
            experts=[(int(p), str(h)) for p, h, _ in states],
            expert_names=[names.get(int(p), f"expert {p}") for p, _, _ in states],
            expert_dev={int(p): float(u) for p, _, u in states if u is not None},
            expert_tests_done=done,
            bests=bests,
            last_applied=-1 if last is None else int(last),
            dev_evaluations=dev_evaluations,
            config_json=search.config_json,
            layout_json=search.layout_json,
            adapter_json=search.adapter_config_json,
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
        row.item_scores = _items(result)
        row.attempts = (row.attempts or 0) + 1
        row.worker, row.started_at, row.finished_at, row.error = worker, started, utcnow(), None


def _items(result: UtilityResult) -> bytes | None:
    return None if result.item_scores is None else encode_item_scores(result.item_scores)


@dataclass
class _Recorded:
    utility: float
    position_hash: str | None


@dataclass
class _Book:
    """Records baseline evaluations and replays the ones already recorded."""

    db: Database
    store: ArtifactStore
    search_id: str
    make_scorer: Callable[[], Scorer]
    worker: str
    say: Callable[[str], None]
    rows: dict[tuple[str, str, int], _Recorded] = field(default_factory=dict)
    _scorer: Scorer | None = None

    @property
    def scorer(self) -> Scorer:
        """The scorer, made on first use: a rerun with everything recorded loads no model."""
        if self._scorer is None:
            self._scorer = self.make_scorer()
        return self._scorer

    @classmethod
    def open(cls, db: Database, store: ArtifactStore, search_id: str, **kw: Any) -> _Book:
        book = cls(db, store, search_id, **kw)
        with db.session() as s:
            for name, split, trial, utility, digest in s.execute(
                select(
                    BaselineRow.name,
                    BaselineRow.split,
                    BaselineRow.trial,
                    BaselineRow.utility,
                    BaselineRow.position_hash,
                ).where(BaselineRow.search_id == search_id)
            ).all():
                book.rows[(str(name), str(split), int(trial))] = _Recorded(float(utility), digest)
        return book

    def complete(self, name: str) -> bool:
        """Whether a baseline has its results on both splits."""
        return all((name, split, 0) in self.rows for split in ("dev", "test"))

    def forget(self, names: Iterable[str]) -> None:
        """Delete every recorded evaluation of these baselines (``--force``)."""
        names = list(names)
        with self.db.session() as s:
            s.execute(
                delete(BaselineRow).where(
                    BaselineRow.search_id == self.search_id, BaselineRow.name.in_(names)
                )
            )
        self.rows = {k: v for k, v in self.rows.items() if k[0] not in names}

    def put(self, vector: np.ndarray) -> str:
        with self.db.session() as s:
            (digest,) = put_vectors_in_txn(s, self.store, [("position", vector)])
        return digest

    def write(
        self,
        name: str,
        split: str,
        trial: int,
        result: UtilityResult,
        *,
        position_hash: str | None,
        metrics: Mapping[str, Any],
        started: datetime,
        finished: datetime | None = None,
        worker: str | None = None,
        items: bytes | None = None,
    ) -> None:
        with self.db.session() as s:
            s.execute(
                delete(BaselineRow).where(
                    BaselineRow.search_id == self.search_id,
                    BaselineRow.name == name,
                    BaselineRow.split == split,
                    BaselineRow.trial == trial,
                )
            )
            s.add(
                BaselineRow(
                    search_id=self.search_id,
                    name=name,
                    split=split,
                    trial=trial,
                    utility=result.value,
                    position_hash=position_hash,
                    metrics={**dict(result.metrics), **dict(metrics)},
                    item_scores=items if items is not None else _items(result),
                    worker=worker or self.worker,
                    started_at=started,
                    finished_at=finished or utcnow(),
                )
            )
        self.rows[(name, split, trial)] = _Recorded(result.value, position_hash)

    def evaluate(
        self, name: str, split: str, trial: int, vector: np.ndarray, metrics: Mapping[str, Any]
    ) -> float:
        """The utility of ``vector`` as evaluation ``trial`` of ``name`` on ``split``: the
        recorded one when there is one (it must be of the same position), else evaluated now."""
        digest = self.put(vector)
        known = self.rows.get((name, split, trial))
        if known is not None:
            if known.position_hash != digest:
                raise SwarmqError(
                    f"the recorded {split} evaluation {trial} of baseline {name!r} is of position "
                    f"{known.position_hash}, but the same choice now gives {digest}; the record "
                    "was made otherwise (another seed or pool): recompute it with --force"
                )
            return known.utility
        what = name if trial == 0 else f"{name} candidate {trial}"
        self.say(f"{what} on {split}")
        started = utcnow()
        result = self.scorer.score(vector, split)
        self.write(
            name, split, trial, result, position_hash=digest, metrics=metrics, started=started
        )
        return result.value

    def choose(self, name: str, trial: int, metrics: Mapping[str, Any]) -> None:
        """Record dev trial ``trial`` of ``name`` again as the baseline's dev result."""
        with self.db.session() as s:
            row = s.scalars(
                select(BaselineRow).where(
                    BaselineRow.search_id == self.search_id,
                    BaselineRow.name == name,
                    BaselineRow.split == "dev",
                    BaselineRow.trial == trial,
                )
            ).one()
            copy = (row.utility, row.position_hash, dict(row.metrics or {}), row.item_scores)
            who = (row.worker, row.started_at, row.finished_at)
        utility, digest, recorded, items = copy
        self.write(
            name,
            "dev",
            0,
            UtilityResult(utility, recorded),
            position_hash=digest,
            metrics={**dict(metrics), "chosen_trial": trial},
            worker=who[0],
            started=who[1] or utcnow(),
            finished=who[2],
            items=items,
        )

    def adopt_expert(self, name: str, particle: int, metrics: Mapping[str, Any]) -> None:
        """Record an expert's iteration-0 dev evaluation as the baseline's dev result."""
        with self.db.session() as s:
            ev = s.scalars(
                select(EvaluationRow).where(
                    EvaluationRow.search_id == self.search_id,
                    EvaluationRow.iteration == 0,
                    EvaluationRow.particle == particle,
                    EvaluationRow.split == "dev",
                )
            ).one()
            copy = (ev.utility, ev.position_hash, dict(ev.metrics or {}), ev.item_scores)
            who = (ev.worker, ev.started_at, ev.finished_at)
        utility, digest, recorded, items = copy
        self.write(
            name,
            "dev",
            0,
            UtilityResult(float(utility or 0.0), recorded),
            position_hash=digest,
            metrics={**dict(metrics), "chosen_trial": None, "from_evaluation": [0, particle]},
            worker=who[0],
            started=who[1] or utcnow(),
            finished=who[2],
            items=items,
        )


def _uniform_soup(book: _Book, inp: _Inputs, vectors: list[np.ndarray]) -> None:
    soup = mean_position(vectors)
    metrics = {"experts": [h for _, h in inp.experts], "expert_names": inp.expert_names}
    for split in ("dev", "test"):
        book.evaluate("uniform_soup", split, 0, soup, metrics)


def _merge(
    book: _Book, inp: _Inputs, vectors: list[np.ndarray], method: str, density: float
) -> None:
    n = len(vectors)
    seed = derived_seed(inp.seed, method)
    kind = {"task_arithmetic": "linear"}.get(method, method)
    trials: list[tuple[int, float, np.ndarray, dict[str, Any]]] = []
    for trial, scale in enumerate(merge_scales(n), start=1):
        weights = [scale] * n
        merged = book.scorer.merge(method, vectors, weights, density, seed)
        metrics: dict[str, Any] = {
            "method": method,
            "combination_type": kind,
            "scale": scale,
            "weights": weights,
            "seed": seed,
        }
        if method != "task_arithmetic":
            metrics["density"] = density
        utility = book.evaluate(method, "dev", trial, merged, metrics)
        trials.append((trial, utility, merged, metrics))
    best = max(trials, key=lambda t: t[1])  # first maximum: the smallest scale among equals
    chosen = {**best[3], "scales_tried": list(merge_scales(n))}
    book.choose(method, best[0], chosen)
    book.evaluate(method, "test", 0, best[2], {**chosen, "chosen_trial": best[0]})


def _greedy(book: _Book, inp: _Inputs, vectors: list[np.ndarray]) -> None:
    missing = [p for p, _ in inp.experts if p not in inp.expert_dev]
    if missing:
        raise SwarmqError(f"expert(s) {missing} have no dev utility at iteration 0")
    order = sorted((p for p, _ in inp.experts), key=lambda p: (-inp.expert_dev[p], p))

    def label(ingredients: Sequence[int]) -> dict[str, Any]:
        return {
            "ingredients": list(ingredients),
            "ingredient_names": [inp.expert_names[i] for i in ingredients],
        }

    def evaluate(trial: int, ingredients: tuple[int, ...]) -> float:
        soup = mean_position([vectors[i] for i in ingredients])
        return book.evaluate("greedy_soup", "dev", trial, soup, label(ingredients))

    kept, _, steps = greedy_soup(order, inp.expert_dev[order[0]], evaluate)
    chosen = {**label(kept), "order": order, "kept": [st.kept for st in steps]}
    kept_trials = [st.trial for st in steps if st.kept]
    if kept_trials:
        book.choose("greedy_soup", kept_trials[-1], chosen)
    else:
        book.adopt_expert("greedy_soup", order[0], chosen)
    soup = mean_position([vectors[i] for i in kept])
    book.evaluate("greedy_soup", "test", 0, soup, chosen)


def _lorahub(book: _Book, inp: _Inputs, vectors: list[np.ndarray], budget: int) -> None:
    seed = derived_seed(inp.seed, "lorahub")
    positions: dict[int, np.ndarray] = {}

    def evaluate(trial: int, weights: tuple[float, ...]) -> float:
        positions[trial] = weighted_position(vectors, weights)
        return book.evaluate("lorahub", "dev", trial, positions[trial], {"weights": list(weights)})

    trials = lorahub_search(len(vectors), budget, seed, evaluate)
    best = max(trials, key=lambda t: t.utility)  # first maximum
    chosen = {
        "weights": list(best.weights),
        "seed": seed,
        "budget": budget,
        "optimiser": "CMA-ES (cmaes), weights in [-1.5, 1.5], from 1/n, step 0.5",
    }
    book.choose("lorahub", best.trial, chosen)
    book.evaluate(
        "lorahub", "test", 0, positions[best.trial], {**chosen, "chosen_trial": best.trial}
    )


def _ensemble(book: _Book, inp: _Inputs, top_k: int, members: list[Member]) -> str:
    name = f"ensemble_top{len(members)}"
    member_vectors = {m.position_hash: book.store.get_vector(m.position_hash) for m in members}
    for split in ("dev", "test"):
        book.say(f"{name} on {split} ({len(members)} members)")
        started = utcnow()
        predictions = [book.scorer.predict(member_vectors[m.position_hash], split) for m in members]
        votes = majority_vote(predictions)
        result = book.scorer.score_predictions(votes, split)
        member_scores = [book.scorer.score_predictions(p, split).value for p in predictions]
        book.write(
            name,
            split,
            0,
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
            started=started,
        )
    return name


def _wanted(only: Sequence[str] | None) -> list[str]:
    if only is None:
        return list(BASELINES)
    unknown = [b for b in only if b not in BASELINES]
    if unknown:
        raise SwarmqError(f"unknown baseline {unknown[0]!r}; choose among {', '.join(BASELINES)}")
    return [b for b in BASELINES if b in only]


def compute_baselines(
    db: Database,
    store: ArtifactStore,
    search_id: str,
    *,
    top_k: int = DEFAULT_TOP_K,
    scorer: Scorer | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    only: Sequence[str] | None = None,
    density: float = DEFAULT_DENSITY,
    lorahub_budget: int | None = None,
) -> BaselineRun:
    """Evaluate and record the baselines of a completed search; returns what was done.

    ``only`` names some of :data:`BASELINES` (default: all). Baselines already recorded on
    both splits are kept unless ``force``; a baseline interrupted half-way replays its recorded
    trials and evaluates the rest (the experts' test evaluations are the search's own record
    and are never recomputed). ``density`` is TIES's and DARE's fraction of entries kept;
    ``lorahub_budget`` overrides LoraHub's number of dev evaluations (default: as many as the
    swarm made). A merge the pool does not allow (e.g. DoRA adapters) is reported in
    ``unavailable``, not raised. ``scorer`` defaults to the search's base model and objective
    (:class:`ModelScorer`, loaded only when something is to be evaluated); tests pass a
    closed-form one.
    """
    say = progress or (lambda _msg: None)
    wanted = _wanted(only)
    if not 0.0 < density <= 1.0:
        raise SwarmqError(f"density = {density!r}: TIES and DARE keep a fraction in (0, 1]")
    if lorahub_budget is not None and lorahub_budget < 1:
        raise SwarmqError(f"LoraHub budget = {lorahub_budget}: give at least 1 dev evaluation")
    inp = _inputs(db, search_id)
    if inp.status != "completed":
        raise SwarmqError(
            f"search {search_id!r} is {inp.status}; baselines are computed on a completed "
            "search (its personal bests are final then)"
        )
    if len(inp.experts) != inp.n_experts or not inp.bests:
        raise SwarmqError(f"search {search_id!r} has an incomplete record at iteration 0")
    members = rank_personal_bests(inp.bests, top_k)
    ensemble = f"ensemble_top{len(members)}"
    names = {b: (ensemble if b == "ensemble" else b) for b in wanted}

    def make_scorer() -> Scorer:
        if scorer is not None:
            return scorer
        return ModelScorer(
            config_of(inp.config_json),
            adapter_config_of(inp.adapter_json),
            layout_of(inp.layout_json),
        )

    book = _Book.open(db, store, search_id, make_scorer=make_scorer, worker=worker_name(), say=say)
    if force:
        book.forget(names.values())
    todo = [b for b in wanted if not book.complete(names[b])]
    if "ensemble" in todo:
        # Before any evaluation: fail fast on e.g. a reward utility.
        book.scorer.check_ensemble()
    vectors = [store.get_vector(h) for _, h in inp.experts]

    tested: list[int] = []
    for (particle, digest), vector in zip(inp.experts, vectors, strict=True):
        if particle in inp.expert_tests_done:
            continue
        say(f"expert {particle} on test")
        started = utcnow()
        result = book.scorer.score(vector, "test")
        _record_expert_test(db, search_id, particle, digest, result, book.worker, started)
        tested.append(particle)

    written: list[str] = []
    unavailable: list[str] = []
    for baseline in todo:
        name = names[baseline]
        if baseline == "uniform_soup":
            _uniform_soup(book, inp, vectors)
        elif baseline in MERGES:
            try:
                _merge(book, inp, vectors, baseline, density)
            except (ModelError, LayoutError) as err:
                unavailable.append(f"{baseline}: {err}")
                continue
        elif baseline == "greedy_soup":
            _greedy(book, inp, vectors)
        elif baseline == "lorahub":
            _lorahub(book, inp, vectors, lorahub_budget or inp.dev_evaluations)
        else:
            _ensemble(book, inp, top_k, members)
        written += [f"{name}/dev", f"{name}/test"]
    skipped = [f"{names[b]}/{sp}" for b in wanted if b not in todo for sp in ("dev", "test")]
    return BaselineRun(tuple(tested), tuple(written), tuple(skipped), tuple(unavailable))
