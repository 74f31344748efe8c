"""Closed-form searches: a pool of small random tensors and a utility with a known optimum.

The utility is minus the squared distance to a hidden random target, so a search needs no
model and runs in milliseconds, while the engine, the database and the workers do all their
real work. Used by the engine, audit, batching and distributed tests and their worker hooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from swarmq.config import SearchConfig, parse_config
from swarmq.errors import UtilityError
from swarmq.objectives import UtilityResult
from swarmq.weights import Layout

__all__ = [
    "N_DEV",
    "N_TEST",
    "SIGN_LAYOUT",
    "TARGET_SEED",
    "SignScorer",
    "closed_form",
    "distance",
    "distance_utility",
    "make_pool",
    "sign_config",
    "sign_pool",
    "sign_utility",
]

TARGET_SEED = 99


def distance(vector: np.ndarray) -> float:
    """Minus the squared distance of ``vector`` to the hidden target."""
    target = np.random.default_rng(TARGET_SEED).normal(size=vector.shape).astype(np.float32)
    return float(-np.sum((vector - target) ** 2))


def distance_utility(
    config: Any, adapter: Any, layout: Any, vector: np.ndarray, split: str
) -> tuple[float, dict[str, Any]]:
    """:func:`distance` as an evaluation hook (``SWARMQ_EVALUATE`` / ``evaluate=``)."""
    return distance(vector), {"split": split}


def make_pool(root: Path, n: int = 4) -> Path:
    """``n`` experts of two tensors (18 parameters), from one seeded generator."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(n):
        save_file(
            {
                "b.weight": rng.normal(size=(3, 4)).astype(np.float32),
                "a.weight": rng.normal(size=(6,)).astype(np.float32),
            },
            str(root / f"e{k}.safetensors"),
        )
    return root


def closed_form(
    pool: Path,
    *,
    swarm: dict[str, Any] | None = None,
    objective: dict[str, Any] | None = None,
    **search: Any,
) -> SearchConfig:
    """A search over ``pool`` (7 particles, at most 8 iterations, patience 4 by default).

    Its objective is a placeholder that only a hook evaluates: create it with
    ``check_objective=False``. ``objective`` adds keys (``options``, ``particles_per_batch``).
    """
    return parse_config(
        {
            "search": {"seed": 4, "particles": 7, "max_iterations": 8} | search,
            "experts": {"path": str(pool)},
            "base_model": {"path": "unused"},
            "objective": {"utility": "exact_match", "dataset": str(pool / "none.json")}
            | (objective or {}),
            "swarm": {"patience": 4} | (swarm or {}),
        }
    )


# --------------------------------------------------- a closed-form classifier (final tables)

N_DEV = N_TEST = 6
SIZE = 18  # 6 + 12: two tensors


SIGN_LAYOUT = Layout.from_shapes({"a.weight": ((6,), "F32"), "b.weight": ((3, 4), "F32")})


class SignScorer:
    """Example j of a split is answered by coordinate j (dev) or 6 + j (test) of a position:
    "A" above 0.3, "B" above -0.3, no answer below. The gold answer is always "A".

    Merges go through peft's ``merge_utils`` as for a full-weight pool, around a base model of
    zeros (so a position is its own task vector)."""

    def __init__(self, *, ensembles: bool = True) -> None:
        self.ensembles = ensembles
        self.calls: list[tuple[str, str]] = []

    def check_ensemble(self) -> None:
        if not self.ensembles:
            raise UtilityError("this utility gives no per-example answers")

    def predict(self, vector: np.ndarray, split: str) -> list[str | None]:
        self.calls.append(("predict", split))
        offset = 0 if split == "dev" else N_DEV
        out: list[str | None] = []
        for j in range(N_DEV if split == "dev" else N_TEST):
            value = float(vector[offset + j])
            out.append("A" if value > 0.3 else "B" if value > -0.3 else None)
        return out

    def score_predictions(self, predictions: Sequence[str | None], split: str) -> UtilityResult:
        hits = [p == "A" for p in predictions]
        return UtilityResult(sum(hits) / len(hits), {"n": len(hits)}, item_scores=tuple(hits))

    def score(self, vector: np.ndarray, split: str) -> UtilityResult:
        self.calls.append(("score", split))
        return self.score_predictions(self.predict(vector, split), split)

    def merge(
        self,
        method: str,
        vectors: Sequence[np.ndarray],
        weights: Sequence[float],
        density: float,
        seed: int,
    ) -> np.ndarray:
        from swarmq.modeling._merge import merge_task_vectors

        self.calls.append(("merge", method))
        zero = np.zeros(SIGN_LAYOUT.size, dtype=np.float32)
        return merge_task_vectors(SIGN_LAYOUT, zero, vectors, weights, method, density, seed)


def sign_utility(
    config: Any, adapter: Any, layout: Any, vector: np.ndarray, split: str
) -> UtilityResult:
    """:class:`SignScorer` as an evaluation hook (with per-item scores)."""
    return SignScorer().score(vector, split)


def sign_pool(root: Path) -> Path:
    """Four full-weight experts of two tensors (18 parameters) for :class:`SignScorer`."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for k in range(4):
        save_file(
            {
                "a.weight": rng.normal(size=(6,)).astype(np.float32),
                "b.weight": rng.normal(size=(3, 4)).astype(np.float32),
            },
            str(root / f"expert{k}.safetensors"),
        )
    return root


def sign_config(pool: Path, **search: Any) -> SearchConfig:
    """A search over a :func:`sign_pool` (8 particles, at most 12 iterations, dropout)."""
    return parse_config(
        {
            "search": {"seed": 2, "particles": 8, "max_iterations": 12} | search,
            "experts": {"path": str(pool)},
            "base_model": {"path": "unused"},
            "objective": {"utility": "multiple_choice", "dataset": str(pool / "none.json")},
            "swarm": {"patience": 5, "restart_patience": 0.4, "dropout_n": 0.1},
        }
    )
