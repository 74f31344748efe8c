"""The paper's final table from a search's record: the search's results beside the baselines.

Each row but the global best's carries, where both have per-item test scores, the paired
bootstrap 95 % interval of (global best - row) on test (:mod:`swarmq.reporting._intervals`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from swarmq.reporting._intervals import Interval, paired_bootstrap
from swarmq.reporting._record import BaselineScore, SearchRecord
from swarmq.swarm import best_initial_expert

__all__ = ["ResultRow", "result_rows"]

_ENSEMBLE = re.compile(r"^ensemble_top(\d+)$")

#: The merges' names in the table.
_MERGE_LABELS = {
    "task_arithmetic": "task arithmetic",
    "ties": "TIES",
    "dare_ties": "DARE-TIES",
    "dare_linear": "DARE-linear",
}


@dataclass(frozen=True)
class ResultRow:
    """One line of the final table.

    ``kind`` is ``search`` or ``baseline``; ``key`` names the row across searches
    (``global_best``, ``best_expert``, ``oracle_expert``, or the baseline's name);
    ``interval`` is the paired bootstrap interval of (global best - this row) on test.
    """

    label: str
    kind: str
    dev: float | None
    test: float | None
    key: str = ""
    interval: Interval | None = None


def _value(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _expert_name(rec: SearchRecord, k: int) -> str:
    name = rec.particles[k].expert_name if k < len(rec.particles) else None
    return name or f"particle {k}"


def _g(x: Any) -> str:
    return f"{float(x):g}" if isinstance(x, int | float) else "?"


def _label(name: str, rec: SearchRecord, test: BaselineScore | None, trials: int) -> str:
    m = test.metrics if test is not None else {}
    if name == "uniform_soup":
        return f"uniform soup (mean of the {rec.n_experts} experts)"
    if name in _MERGE_LABELS:
        what = f"{_MERGE_LABELS[name]} (peft {m.get('combination_type', name)}"
        if "density" in m:
            what += f", density {_g(m['density'])}"
        return what + f", weight {_g(m.get('scale'))} chosen on dev)"
    if name == "greedy_soup":
        kept = m.get("ingredients", [])
        return f"greedy soup ({len(kept)} of {rec.n_experts} experts)"
    if name == "lorahub":
        return f"LoraHub (CMA-ES over expert weights, {trials} dev evaluations)"
    found = _ENSEMBLE.match(name)
    if found is not None:
        return f"top-{found.group(1)} ensemble of personal bests (majority vote)"
    return name


def _order(name: str) -> tuple[int, int, str]:
    fixed = ["uniform_soup", *_MERGE_LABELS, "greedy_soup", "lorahub"]
    if name in fixed:
        return (fixed.index(name), 0, name)
    found = _ENSEMBLE.match(name)
    return (len(fixed), int(found.group(1)) if found else 0, name)


def result_rows(rec: SearchRecord) -> list[ResultRow]:
    """The rows the record supports so far (baselines appear once ``swarmq baselines`` ran).

    * best initial expert: the expert with the highest dev utility at iteration 0 (lowest
      index among equals), as the search itself reports it;
    * global best: the search's result;
    * best single expert on test: the oracle choice among the experts (an upper bound on
      picking one expert), once every expert has a test score;
    * the baselines recorded by ``swarmq baselines``: soups, peft merges, LoraHub, ensembles.
    """
    rows: list[ResultRow] = []
    items: dict[str, np.ndarray | None] = {}
    if rec.n_iterations == 0 or rec.n_experts == 0:
        return rows
    dev0 = rec.utility[0, : rec.n_experts]
    k = best_initial_expert([float(u) for u in dev0])  # NaN: not evaluated
    if k is not None:
        rows.append(
            ResultRow(
                f"best initial expert, chosen on dev ({_expert_name(rec, k)})",
                "search",
                _value(dev0[k]),
                rec.tests.get((0, k)),
                "best_expert",
            )
        )
        items["best_expert"] = rec.test_items.get((0, k))
    applied = rec.applied
    if applied:
        last = applied[-1]
        if last.best_particle is not None and last.best_iteration is not None:
            rows.append(
                ResultRow(
                    f"global best (particle {last.best_particle}, iteration {last.best_iteration})",
                    "search",
                    last.best_utility,
                    rec.tests.get((last.best_iteration, last.best_particle)),
                    "global_best",
                )
            )
            items["global_best"] = rec.test_items.get((last.best_iteration, last.best_particle))
    tests = [rec.tests.get((0, k)) for k in range(rec.n_experts)]
    if all(t is not None for t in tests):
        values = [float(t) for t in tests if t is not None]
        k = int(np.argmax(values))
        rows.append(
            ResultRow(
                f"best single expert on test, oracle ({_expert_name(rec, k)})",
                "baseline",
                _value(dev0[k]),
                values[k],
                "oracle_expert",
            )
        )
        items["oracle_expert"] = rec.test_items.get((0, k))
    by_name: dict[str, dict[str, BaselineScore]] = {}
    for b in rec.baselines:
        by_name.setdefault(b.name, {})[b.split] = b
    for name in sorted(by_name, key=_order):
        splits = by_name[name]
        dev, test = splits.get("dev"), splits.get("test")
        rows.append(
            ResultRow(
                _label(name, rec, test or dev, dev.trials if dev is not None else 0),
                "baseline",
                None if dev is None else dev.utility,
                None if test is None else test.utility,
                name,
            )
        )
        items[name] = None if test is None else test.item_scores
    best = items.get("global_best")
    if best is None:
        return rows
    out: list[ResultRow] = []
    for row in rows:
        other = items.get(row.key)
        if row.key != "global_best" and other is not None and other.shape == best.shape:
            row = ResultRow(
                row.label, row.kind, row.dev, row.test, row.key, paired_bootstrap(best, other)
            )
        out.append(row)
    return out
