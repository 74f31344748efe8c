"""The asynchronous swarm's own rules, as pure functions (see docs/algorithm.md).

In the asynchronous mode a particle moves as soon as its own evaluation is applied, using the
global best and worst as they stand at that moment. The update itself is the synchronous one
(:func:`swarmq.swarm.apply_update`, with factors and step length keyed by the particle's own
iteration); what changes is when it happens, so the stop rules are restated here in terms of
*applications* (applied evaluations, in the order the record numbers them):

* the budget is the synchronous search's: ``N * (max_iterations + 1)`` evaluations;
* the stop rule is the synchronous one applied to the global best sampled after every ``N``
  applications (one "iteration's worth" of evaluations), checked at those moments only.
"""

from __future__ import annotations

from collections.abc import Sequence

from swarmq.swarm._core import Best, should_stop
from swarmq.swarm._params import SwarmParams

__all__ = [
    "asynchronous_stop",
    "evaluation_budget",
    "improves_best",
    "improves_worst",
    "may_move",
]


def evaluation_budget(n_particles: int, params: SwarmParams) -> int:
    """How many dev evaluations an asynchronous search may create in all: as many as a
    synchronous search that runs all ``max_iterations`` iterations after iteration 0."""
    return n_particles * (params.max_iterations + 1)


def asynchronous_stop(
    block_bests: Sequence[float], applications: int, n_particles: int, params: SwarmParams
) -> str | None:
    """The stop decision after ``applications`` evaluations were applied, or ``None``.

    ``block_bests`` holds the global-best utility after applications ``N, 2N, ...`` (one value
    per complete block of ``N``). The rule is checked only when a block completes, and it is
    :func:`swarmq.swarm.should_stop` over those values with the number of complete blocks as
    the next iteration: patience counts blocks of ``N`` applications, and ``max_iterations``
    is reached with the budget (:func:`evaluation_budget`).
    """
    if applications == 0 or applications % n_particles != 0:
        return None
    blocks = applications // n_particles
    if len(block_bests) != blocks:
        raise ValueError(f"{len(block_bests)} block bests for {blocks} complete blocks")
    return should_stop(block_bests, blocks, params)


def may_move(stopping: bool, created: int, n_particles: int, params: SwarmParams) -> bool:
    """Whether the particle just applied gets a next position: no stop was decided and the
    budget has room for one more evaluation (``created`` counts the dev evaluations so far)."""
    return not stopping and created < evaluation_budget(n_particles, params)


def improves_best(current: Best | None, utility: float) -> bool:
    """Whether one applied utility sets a new global best (strictly above the record)."""
    return current is None or utility > current.utility


def improves_worst(current: Best | None, utility: float) -> bool:
    """Whether one applied utility sets a new global worst (strictly below the record)."""
    return current is None or utility < current.utility
