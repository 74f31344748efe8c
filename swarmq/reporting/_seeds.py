"""Mean and spread over the searches of a seed group (``swarmq run CONFIG --seeds 0,1,2``).

Each search's final table (:func:`swarmq.reporting.result_rows`) gives one value per row and
split; rows are matched across seeds by their key (the global best, the best initial expert, the
oracle expert, each baseline) and summarised by mean, sample standard deviation, minimum and
maximum. Where the per-seed tables carry paired intervals, the summary also counts the seeds in
which the global best was significantly better (interval above 0) or worse (below 0).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from swarmq.reporting._record import load_record
from swarmq.reporting._table import ResultRow, result_rows
from swarmq.storage import Database

__all__ = ["Spread", "SpreadRow", "seed_summary"]

_LABELS = {
    "global_best": "global best",
    "best_expert": "best initial expert, chosen on dev",
    "oracle_expert": "best single expert on test, oracle",
    "uniform_soup": "uniform soup",
    "task_arithmetic": "task arithmetic",
    "ties": "TIES",
    "dare_ties": "DARE-TIES",
    "dare_linear": "DARE-linear",
    "greedy_soup": "greedy soup",
    "lorahub": "LoraHub",
}
_ENSEMBLE = re.compile(r"^ensemble_top(\d+)$")


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (``None`` for one value), minimum and maximum."""

    n: int
    mean: float
    sd: float | None
    low: float
    high: float

    def describe(self) -> str:
        """``0.8100 ± 0.0200`` (± one standard deviation over seeds)."""
        return f"{self.mean:.4f}" + ("" if self.sd is None else f" ± {self.sd:.4f}")


def _spread(values: Sequence[float | None]) -> Spread | None:
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None
    sd = statistics.stdev(xs) if len(xs) > 1 else None
    return Spread(len(xs), statistics.fmean(xs), sd, min(xs), max(xs))


@dataclass(frozen=True)
class SpreadRow:
    """One row of the seed summary; ``better``/``worse`` count seeds whose paired interval of
    (global best - row) on test lies above/below 0, out of ``intervals`` seeds that have one."""

    key: str
    label: str
    kind: str
    seeds: int
    dev: Spread | None
    test: Spread | None
    difference: Spread | None
    better: int
    worse: int
    intervals: int


def _label(key: str) -> str:
    found = _ENSEMBLE.match(key)
    if found is not None:
        return f"top-{found.group(1)} ensemble of personal bests"
    return _LABELS.get(key, key)


def seed_summary(db: Database, search_ids: Sequence[str]) -> list[SpreadRow]:
    """The summary over ``search_ids`` (one per seed), rows in the first search's order."""
    tables: list[list[ResultRow]] = [result_rows(load_record(db, sid)) for sid in search_ids]
    order: list[str] = []
    kinds: dict[str, str] = {}
    for rows in tables:
        for r in rows:
            if r.key not in kinds:
                order.append(r.key)
                kinds[r.key] = r.kind
    out: list[SpreadRow] = []
    for key in order:
        found = [r for rows in tables for r in rows if r.key == key]
        intervals = [r.interval for r in found if r.interval is not None]
        out.append(
            SpreadRow(
                key=key,
                label=_label(key),
                kind=kinds[key],
                seeds=len(found),
                dev=_spread([r.dev for r in found]),
                test=_spread([r.test for r in found]),
                difference=_spread([i.estimate for i in intervals]),
                better=sum(i.low > 0 for i in intervals),
                worse=sum(i.high < 0 for i in intervals),
                intervals=len(intervals),
            )
        )
    return out
