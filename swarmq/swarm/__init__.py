"""The Model Swarms algorithm: pure, I/O-free functions over flat float32 positions."""

from swarmq.swarm._core import (
    Best,
    Factors,
    Parent,
    apply_update,
    draw_factors,
    expand_population,
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
    "apply_update",
    "draw_factors",
    "expand_population",
    "generator",
    "initial_velocity",
    "needs_restart",
    "select_best",
    "select_worst",
    "should_stop",
    "skipped_evaluations",
    "step_length_at",
    "update_coefficients",
]
