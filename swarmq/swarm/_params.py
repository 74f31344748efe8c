"""Hyperparameters of the swarm, as plain frozen data the pure functions take."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["SwarmParams"]


@dataclass(frozen=True)
class SwarmParams:
    """The Model Swarms hyperparameters (defaults: the reference code's)."""

    inertia: float = 0.4
    cognitive: float = 0.3
    social: float = 0.3
    repel: float = 0.3
    step_length: float = 1.0
    step_length_factor: float = 0.95
    min_step_length: float = 0.1
    patience: int = 10
    max_iterations: int = 200
    restart_patience: float = 0.5
    random_weights: bool = True
    initial_velocity: Literal["random", "zero", "best"] = "random"
    repel_term: bool = True
    restart: bool = True
    dropout_k: float = 0.0
    dropout_n: float = 0.0
