"""The process-wide runtime: which database, artifact store and dispatcher the tasks use.

Celery tasks are plain functions of ids; they find their database and store here. A worker
installs one runtime for its process at start-up; the embedded runner makes its own current only
while it drives a search (:func:`runtime_installed`), so a program can hold several.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from swarmq.errors import SwarmqError
from swarmq.objectives import UtilityResult
from swarmq.settings import Settings
from swarmq.storage import ArtifactStore, Database, LocalArtifactStore

__all__ = [
    "Dispatcher",
    "ModelEvaluate",
    "Runtime",
    "current_runtime",
    "install_runtime",
    "model_evaluate",
    "runtime_from_settings",
    "runtime_installed",
]


class Dispatcher(Protocol):
    """Sends units of work; the embedded queue and Celery both implement it."""

    def send_evaluation(
        self, search_id: str, iteration: int, particle: int, split: str
    ) -> None: ...

    def send_coordination(self, search_id: str, iteration: int) -> None: ...


@dataclass
class Runtime:
    """What a task needs to run: the record (database + artifacts) and where to send work."""

    db: Database
    store: ArtifactStore
    dispatcher: Dispatcher
    # How a position is scored; the default loads the search's base model (swarmq.modeling).
    # Replaceable for objectives that need no language model, and for engine tests. A hook
    # with a ``many`` method (see ModelEvaluate) scores several positions in one call. It
    # returns (utility, metrics), or a UtilityResult whose per-item scores are then recorded.
    evaluate: Callable[..., tuple[float, dict[str, Any]] | UtilityResult] = field(
        default_factory=lambda: model_evaluate
    )


_current: Runtime | None = None


def install_runtime(runtime: Runtime) -> Runtime:
    """Make ``runtime`` the one the tasks of this process use."""
    global _current
    _current = runtime
    return runtime


@contextmanager
def runtime_installed(runtime: Runtime) -> Iterator[Runtime]:
    """Make ``runtime`` current for the block, then put back the one that was."""
    global _current
    previous, _current = _current, runtime
    try:
        yield runtime
    finally:
        _current = previous


def current_runtime() -> Runtime:
    """The installed runtime; a task run outside a worker or runner gets a clear error."""
    if _current is None:
        raise SwarmqError(
            "no swarmq runtime is installed in this process "
            "(start it with swarmq run or swarmq worker)"
        )
    return _current


class ModelEvaluate:
    """The default evaluation hook: the process's resident model for the search's base model.

    The model is loaded on the first call in a process (:func:`swarmq.modeling.get_evaluator`)
    and kept; each call only writes a position into it. ``many`` scores several positions of one
    search, iteration and split together (``[objective] particles_per_batch`` of them per
    mixed-adapter batch); it returns what calling the hook on each position would.
    """

    def __call__(
        self,
        config: Any,
        adapter_config: dict[str, Any] | None,
        layout: Any,
        vector: np.ndarray,
        split: str,
    ) -> UtilityResult:
        from swarmq.modeling import get_evaluator

        return get_evaluator(config, adapter_config).evaluate(layout, vector, split)  # type: ignore[arg-type]

    def many(
        self,
        config: Any,
        adapter_config: dict[str, Any] | None,
        layout: Any,
        vectors: list[np.ndarray],
        split: str,
    ) -> list[UtilityResult]:
        from swarmq.modeling import get_evaluator

        return get_evaluator(config, adapter_config).evaluate_many(layout, vectors, split)  # type: ignore[arg-type]


model_evaluate: ModelEvaluate = ModelEvaluate()


def runtime_from_settings(
    settings: Settings, dispatcher: Dispatcher, *, create: bool = True
) -> Runtime:
    """Open the database (creating an empty one's schema when ``create``) and the store."""
    db = Database(settings.database_url)
    db.check_schema(create=create)
    return Runtime(db=db, store=LocalArtifactStore(settings.artifacts), dispatcher=dispatcher)
