"""Paired bootstrap intervals from recorded per-item scores (no evaluation again).

Two models scored on the same test items give two score vectors ``a`` and ``b`` in the same
item order. The difference of their utilities is estimated by ``mean(a - b)``; resampling the
items with replacement (the same resample for both: *paired*) gives its sampling spread, and
the 2.5 and 97.5 percentiles of the resampled differences make the 95 % interval. Pairing
matters: two models of one base model get most items right or wrong together, so the interval
of their difference is much narrower than the two intervals of their scores would suggest.

The resampling is seeded (:data:`BOOTSTRAP_SEED`), so a report shows the same interval every
time it is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from swarmq.errors import SwarmqError

__all__ = ["BOOTSTRAP_RESAMPLES", "BOOTSTRAP_SEED", "Interval", "paired_bootstrap"]

#: Resamples per interval: the percentiles of 10,000 move by about 0.1 % of the spread.
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
# Resampled indices are drawn in blocks of about this many, to bound memory.
_BLOCK = 2_000_000


@dataclass(frozen=True)
class Interval:
    """``estimate`` = mean(a - b) over ``n`` items, and its percentile interval."""

    estimate: float
    low: float
    high: float
    n: int
    level: float
    resamples: int
    seed: int

    def describe(self) -> str:
        """``+0.0450 [+0.0100, +0.0800]``."""
        return f"{self.estimate:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"

    def as_dict(self) -> dict[str, float | int]:
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "level": self.level,
            "resamples": self.resamples,
            "seed": self.seed,
        }


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> Interval:
    """The paired bootstrap percentile interval of ``mean(a) - mean(b)`` (see the module)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise SwarmqError(
            f"a paired bootstrap needs two score lists over the same items, got {x.shape} and "
            f"{y.shape}"
        )
    if resamples < 1 or not 0.0 < level < 1.0:
        raise SwarmqError(f"bad bootstrap settings: resamples={resamples}, level={level}")
    d = x - y
    n = d.size
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    block = max(1, _BLOCK // n)
    for start in range(0, resamples, block):
        k = min(block, resamples - start)
        means[start : start + k] = d[rng.integers(0, n, size=(k, n))].mean(axis=1)
    tail = (1.0 - level) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(float(d.mean()), float(low), float(high), n, level, resamples, seed)
