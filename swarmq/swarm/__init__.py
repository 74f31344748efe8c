"""The Model Swarms algorithm: pure, I/O-free functions over flat float32 positions."""

from swarmq.swarm._asynchronous import (
    asynchronous_stop,
    evaluation_budget,
    improves_best,
    improves_worst,
    may_move,
)
from swarmq.swarm._core import (
    Best,
    Factors,
    Parent,
    UpdateRecord,
    apply_update,
    best_initial_expert,
    draw_factors,
    expand_population,
    improves_personal_best,
    initial_velocity,
    needs_restart,
    select_best,
    select_worst,
    should_stop,
    skipped_evaluations,
    step_length_at,
    update_coefficients,
)
from swarmq.swarm._params import SwarmParams
from swarmq.swarm._rng import Stream, generator

__all__ = [
    "Best",
    "Factors",
    "Parent",
    "Stream",
    "SwarmParams",
    "UpdateRecord",
    "apply_update",
    "asynchronous_stop",
    "best_initial_expert",
    "draw_factors",
    "evaluation_budget",
    "expand_population",
    "generator",
    "improves_best",
    "improves_personal_best",
    "improves_worst",
    "initial_velocity",
    "may_move",
    "needs_restart",
    "select_best",
    "select_worst",
    "should_stop",
    "skipped_evaluations",
    "step_length_at",
    "update_coefficients",
]
