"""``swarmq audit --reevaluate K [--final]``: run recorded evaluations again and compare.

The audit proper recomputes every update from the record, but it takes the recorded utilities
as given: a utility changed consistently (in the evaluation and in the particle state), or a
changed test score of the final table, passes it. Re-evaluating catches both: K recorded dev
evaluations, drawn from a seeded sample, and with ``final`` every test evaluation of the final
table, are evaluated again at their recorded positions (each read from the store, its hash
verified) and compared with the record.

The comparison is exact by default: utilities are evaluated with greedy decoding, so the same
position on the same device and dtype gives the same number. On another device or dtype
(or another batch composition, with ``particles_per_batch`` > 1) the numbers may differ by
rounding; ``tolerance`` then accepts a difference up to that value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select

from swarmq.engine import adapter_config_of, config_of, layout_of, search_in_txn
from swarmq.errors import SwarmqError
from swarmq.objectives import UtilityResult
from swarmq.storage import ArtifactStore, Database, EvaluationRow

__all__ = ["Reevaluated", "reevaluate_search", "sample_evaluations"]


@dataclass(frozen=True)
class Reevaluated:
    """One recorded evaluation run again: its recorded and recomputed utility (``None`` when
    it could not be evaluated, with ``error`` saying why)."""

    iteration: int
    particle: int
    split: str
    recorded: float
    recomputed: float | None
    error: str | None = None

    def agrees(self, tolerance: float) -> bool:
        """Whether the recomputed utility matches the record (exactly, or within tolerance)."""
        if self.recomputed is None:
            return False
        if tolerance == 0.0:
            return self.recomputed == self.recorded
        return abs(self.recomputed - self.recorded) <= tolerance


def sample_evaluations(keys: list[tuple[int, int]], k: int, seed: int) -> list[tuple[int, int]]:
    """``k`` of the ``(iteration, particle)`` keys, drawn without replacement from a generator
    seeded with the search seed (the same sample every time), in record order."""
    if k >= len(keys):
        return sorted(keys)
    rng = np.random.default_rng([seed, 0x5EED])
    chosen = rng.choice(len(keys), size=k, replace=False)
    return sorted(keys[int(i)] for i in chosen)


def reevaluate_search(
    db: Database,
    store: ArtifactStore,
    search_id: str,
    *,
    sample: int,
    final: bool,
    evaluate: Callable[..., Any],
) -> list[Reevaluated]:
    """Run ``sample`` recorded dev evaluations again (and with ``final`` the final table's test
    evaluations), with ``evaluate(config, adapter_config, layout, vector, split)``."""
    with db.session() as s:
        search = search_in_txn(s, search_id)
        config = config_of(search.config_json)
        layout = layout_of(search.layout_json)
        adapter_config = adapter_config_of(search.adapter_config_json)
        seed = search.seed
        rows = s.execute(
            select(
                EvaluationRow.iteration,
                EvaluationRow.particle,
                EvaluationRow.split,
                EvaluationRow.utility,
                EvaluationRow.position_hash,
            ).where(EvaluationRow.search_id == search_id, EvaluationRow.status == "done")
        ).all()
    dev = {(t, p): (u, h) for t, p, split, u, h in rows if split == "dev" and u is not None}
    test = {(t, p): (u, h) for t, p, split, u, h in rows if split == "test" and u is not None}
    work = [(key, "dev", *dev[key]) for key in sample_evaluations(list(dev), sample, seed)]
    if final:
        work += [(key, "test", *test[key]) for key in sorted(test)]
    out: list[Reevaluated] = []
    for (t, p), split, recorded, digest in work:
        try:
            vector = store.get_vector(digest)
            result = evaluate(config, adapter_config, layout, vector, split)
            value = result.value if isinstance(result, UtilityResult) else result[0]
            out.append(Reevaluated(t, p, split, float(recorded), float(value)))
        except SwarmqError as err:
            out.append(Reevaluated(t, p, split, float(recorded), None, str(err)))
    return out
