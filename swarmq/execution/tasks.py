"""Celery tasks: thin wrappers that call the engine with the process's runtime."""

from __future__ import annotations

from typing import Any

from swarmq.engine import coordinate_iteration, current_runtime, run_evaluation
from swarmq.execution._app import app

__all__ = ["coordinate", "evaluate"]


@app.task(name="swarmq.evaluate")
def evaluate(search_id: str, iteration: int, particle: int, split: str = "dev") -> dict[str, Any]:
    """Evaluate one particle's position at one iteration on one split, exactly once."""
    outcome = run_evaluation(current_runtime(), search_id, iteration, particle, split)
    return {"status": outcome.status, "utility": outcome.utility}


@app.task(name="swarmq.coordinate")
def coordinate(search_id: str, iteration: int) -> dict[str, Any]:
    """Apply an iteration whose evaluations are all in; a repeated call is a no-op."""
    result = coordinate_iteration(current_runtime(), search_id, iteration)
    return {
        "status": result.status,
        "next_iteration": result.next_iteration,
        "reason": result.reason,
    }
