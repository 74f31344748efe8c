"""The paper's final table from a search's record: the search's results beside the baselines."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from swarmq.reporting._record import SearchRecord

__all__ = ["ResultRow", "result_rows"]

_ENSEMBLE = re.compile(r"^ensemble_top(\d+)$")


@dataclass(frozen=True)
class ResultRow:
    """One line of the final table; ``kind`` is ``search`` or ``baseline``."""

    label: str
    kind: str
    dev: float | None
    test: float | None


def _value(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _expert_name(rec: SearchRecord, k: int) -> str:
    name = rec.particles[k].expert_name if k < len(rec.particles) else None
    return name or f"particle {k}"


def result_rows(rec: SearchRecord) -> list[ResultRow]:
    """The rows the record supports so far (baselines appear once ``swarmq baselines`` ran).

    * best initial expert: the expert with the highest dev utility at iteration 0 (lowest
      index among equals), as the search itself reports it;
    * global best: the search's result;
    * best single expert on test: the oracle choice among the experts (an upper bound on
      picking one expert), once every expert has a test score;
    * uniform soup and top-k ensembles, as recorded by ``swarmq baselines``.
    """
    rows: list[ResultRow] = []
    if rec.n_iterations == 0 or rec.n_experts == 0:
        return rows
    dev0 = rec.utility[0, : rec.n_experts]
    if not np.all(np.isnan(dev0)):
        k = int(np.argmax(np.where(np.isnan(dev0), -np.inf, dev0)))
        rows.append(
            ResultRow(
                f"best initial expert, chosen on dev ({_expert_name(rec, k)})",
                "search",
                _value(dev0[k]),
                rec.tests.get((0, k)),
            )
        )
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
                )
            )
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
            )
        )
    scores: dict[str, dict[str, float]] = {}
    for b in rec.baselines:
        scores.setdefault(b.name, {})[b.split] = b.utility
    if "uniform_soup" in scores:
        s = scores["uniform_soup"]
        rows.append(
            ResultRow(
                f"uniform soup (mean of the {rec.n_experts} experts)",
                "baseline",
                s.get("dev"),
                s.get("test"),
            )
        )
    ensembles = sorted(
        (int(m.group(1)), name) for name in scores if (m := _ENSEMBLE.match(name)) is not None
    )
    for k, name in ensembles:
        s = scores[name]
        rows.append(
            ResultRow(
                f"top-{k} ensemble of personal bests (majority vote)",
                "baseline",
                s.get("dev"),
                s.get("test"),
            )
        )
    return rows
