"""The audit of a search's baselines (``swarmq baselines``), from the record alone.

For every recorded baseline evaluation: its position artifact hashes to its name, its per-item
scores decode and number the examples (when the metrics give ``n``). Then, per baseline:

* uniform soup, greedy soup, LoraHub: every position is recomputed from the experts' recorded
  positions (the same float64 sums as :mod:`swarmq.engine`) and must be the recorded
  bytes;
* greedy soup: each candidate is the soup so far plus the next expert in order of dev utility,
  each keep decision follows from the recorded dev utilities, and the result is the soup kept;
* LoraHub: the seeded CMA-ES search is replayed with the recorded dev utilities: it must propose
  exactly the recorded weights, as many times as the budget says (the swarm's dev evaluations);
* the merges: the scales tried are the prescribed ones (their positions come from peft and the
  base model, so they are checked by hash, not recomputed);
* every baseline that chose on dev: its dev result repeats the best candidate (the first among
  equals) and its test result evaluates that candidate's position;
* ensembles: the vote recounted from the recorded member answers gives the recorded answers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select

from swarmq.engine import (
    MERGES,
    derived_seed,
    lorahub_search,
    majority_vote,
    mean_position,
    merge_scales,
    weighted_position,
)
from swarmq.errors import SwarmqError
from swarmq.storage import BaselineRow, Database, decode_item_scores

__all__ = ["BaselineEval", "check_baselines"]


@dataclass(frozen=True)
class BaselineEval:
    """One recorded baseline evaluation, as the audit reads it."""

    name: str
    split: str
    trial: int
    utility: float
    position_hash: str | None
    metrics: dict[str, Any]
    item_scores: bytes | None


def _rows(db: Database, search_id: str) -> list[BaselineEval]:
    with db.session() as s:
        return [
            BaselineEval(str(n), str(sp), int(t), float(u), h, dict(m or {}), items)
            for n, sp, t, u, h, m, items in s.execute(
                select(
                    BaselineRow.name,
                    BaselineRow.split,
                    BaselineRow.trial,
                    BaselineRow.utility,
                    BaselineRow.position_hash,
                    BaselineRow.metrics,
                    BaselineRow.item_scores,
                )
                .where(BaselineRow.search_id == search_id)
                .order_by(BaselineRow.name, BaselineRow.split, BaselineRow.trial)
            ).all()
        ]


# (what, expected, recorded) -> whether they agreed; a mismatch is recorded by the caller's
# findings, which may stop the audit.
Check = Callable[[str, Any, Any], bool]
# (what, vector, recorded hash): compare a recomputed position with the recorded artifact.
Compare = Callable[[str, np.ndarray, str | None], None]
# (what, hash) -> the verified vector, or None (a mismatch was recorded).
Read = Callable[[str, str], np.ndarray | None]


def check_baselines(
    db: Database,
    search_id: str,
    *,
    seed: int,
    experts: Sequence[np.ndarray | None],
    expert_dev: dict[int, float],
    dev_evaluations: int,
    check: Check,
    compare: Compare,
    read: Read,
) -> tuple[int, list[str]]:
    """Check every recorded baseline evaluation (see the module); returns how many rows were
    read and notes for the audit's result."""
    rows = _rows(db, search_id)
    notes: list[str] = []
    if not rows:
        return 0, notes
    by_name: dict[str, list[BaselineEval]] = {}
    for r in rows:
        by_name.setdefault(r.name, []).append(r)
        where = f"baseline {r.name} {r.split} evaluation {r.trial}"
        if r.position_hash is not None:
            read(f"{where}: artifact", r.position_hash)
        if r.item_scores is not None:
            try:
                count = len(decode_item_scores(r.item_scores))
            except SwarmqError as err:
                check(f"{where}: item scores", "a readable record", str(err))
            else:
                n = r.metrics.get("n")
                if isinstance(n, int):
                    check(f"{where}: item scores", f"{n} scores", f"{count} scores")
    have = all(x is not None for x in experts)
    vecs = [x for x in experts if x is not None]
    for name, evals in by_name.items():
        trials = {r.trial: r for r in evals if r.split == "dev" and r.trial > 0}
        dev = next((r for r in evals if r.split == "dev" and r.trial == 0), None)
        test = next((r for r in evals if r.split == "test" and r.trial == 0), None)
        if name == "uniform_soup" and have:
            soup = mean_position(vecs)
            for r in evals:
                compare(f"baseline uniform_soup {r.split}: position", soup, r.position_hash)
        elif name == "greedy_soup" and have:
            _check_greedy(evals, trials, dev, test, vecs, expert_dev, check, compare)
        elif name == "lorahub" and have:
            _check_lorahub(trials, dev, test, vecs, seed, dev_evaluations, check, compare, notes)
        elif name in MERGES:
            scales = [trials[t].metrics.get("scale") for t in sorted(trials)]
            check(f"baseline {name}: scales tried", list(merge_scales(len(experts))), scales)
            _check_choice(name, trials, dev, test, check)
            if trials:
                notes.append(
                    f"baseline {name}: positions checked by hash (peft's merge needs the base "
                    "model to recompute)"
                )
        elif name.startswith("ensemble_top"):
            for r in evals:
                members = r.metrics.get("member_predictions")
                if isinstance(members, list) and members:
                    check(
                        f"baseline {name} {r.split}: vote",
                        majority_vote(members),
                        r.metrics.get("predictions"),
                    )
    if not have:
        notes.append("baseline positions were not recomputed: an expert's position is unreadable")
    return len(rows), notes


def _check_choice(
    name: str,
    trials: dict[int, BaselineEval],
    dev: BaselineEval | None,
    test: BaselineEval | None,
    check: Check,
) -> BaselineEval | None:
    """The dev result repeats the best trial (first among equals), the test result its position."""
    if not trials:
        return None
    best = max((trials[t] for t in sorted(trials)), key=lambda r: r.utility)
    if dev is not None:
        check(f"baseline {name} dev: chosen trial", best.trial, dev.metrics.get("chosen_trial"))
        check(f"baseline {name} dev: utility", best.utility, dev.utility)
        check(f"baseline {name} dev: position", best.position_hash, dev.position_hash)
    if test is not None:
        check(f"baseline {name} test: position", best.position_hash, test.position_hash)
    return best


def _check_greedy(
    evals: list[BaselineEval],
    trials: dict[int, BaselineEval],
    dev: BaselineEval | None,
    test: BaselineEval | None,
    experts: list[np.ndarray],
    expert_dev: dict[int, float],
    check: Check,
    compare: Compare,
) -> None:
    order = sorted(range(len(experts)), key=lambda p: (-expert_dev.get(p, float("-inf")), p))
    kept = [order[0]]
    best = expert_dev.get(order[0], float("nan"))
    chosen: int | None = None
    for t, expert in enumerate(order[1:], start=1):
        r = trials.get(t)
        if r is None:
            check(f"baseline greedy_soup dev trial {t}", "recorded", "missing")
            return
        candidate = [*kept, expert]
        check(
            f"baseline greedy_soup dev trial {t}: ingredients",
            candidate,
            r.metrics.get("ingredients"),
        )
        compare(
            f"baseline greedy_soup dev trial {t}: position",
            mean_position([experts[i] for i in candidate]),
            r.position_hash,
        )
        if r.utility >= best:
            kept, best, chosen = candidate, r.utility, t
    if dev is not None:
        check("baseline greedy_soup dev: chosen trial", chosen, dev.metrics.get("chosen_trial"))
        check("baseline greedy_soup dev: utility", best, dev.utility)
    if test is not None:
        check("baseline greedy_soup test: ingredients", kept, test.metrics.get("ingredients"))
        compare(
            "baseline greedy_soup test: position",
            mean_position([experts[i] for i in kept]),
            test.position_hash,
        )


class _Replayed(Exception):
    pass


def _check_lorahub(
    trials: dict[int, BaselineEval],
    dev: BaselineEval | None,
    test: BaselineEval | None,
    experts: list[np.ndarray],
    seed: int,
    dev_evaluations: int,
    check: Check,
    compare: Compare,
    notes: list[str],
) -> None:
    result = test or dev
    budget = None if result is None else result.metrics.get("budget")
    if budget != dev_evaluations:
        notes.append(
            f"baseline lorahub: budget {budget} dev evaluations, the swarm made {dev_evaluations}"
        )
    check("baseline lorahub: dev evaluations", budget, len(trials))
    for t in sorted(trials):
        r = trials[t]
        compare(
            f"baseline lorahub dev trial {t}: position",
            weighted_position(experts, r.metrics.get("weights", [])),
            r.position_hash,
        )

    def replay(t: int, weights: tuple[float, ...]) -> float:
        r = trials.get(t)
        if r is None:
            raise _Replayed
        if not check(
            f"baseline lorahub dev trial {t}: weights", list(weights), r.metrics.get("weights")
        ):
            raise _Replayed
        return r.utility

    if trials:
        # Stops at the first candidate that is not the recorded one (a mismatch is recorded).
        with contextlib.suppress(_Replayed):
            lorahub_search(len(experts), len(trials), derived_seed(seed, "lorahub"), replay)
    _check_choice("lorahub", trials, dev, test, check)
