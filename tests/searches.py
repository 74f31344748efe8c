"""Closed-form searches: a pool of small random tensors and a utility with a known optimum.

The utility is minus the squared distance to a hidden random target, so a search needs no
model and runs in milliseconds, while the engine, the database and the workers do all their
real work. Used by the engine, audit, batching and distributed tests and their worker hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from swarmq.config import SearchConfig, parse_config

__all__ = ["TARGET_SEED", "closed_form", "distance", "distance_utility", "make_pool"]

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
