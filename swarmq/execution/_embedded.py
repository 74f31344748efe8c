"""The embedded mode: no broker, no servers; the same tasks run in this process.

Work is queued in memory in the order it is sent and each message runs through Celery's
``Task.apply`` (the task's own code path, without a broker). The queue itself is never the
record: after a crash, :func:`swarmq.engine.pending_work` rebuilds it from the database.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from swarmq.config import SearchConfig
from swarmq.engine import (
    Runtime,
    create_search,
    driving,
    one_line,
    pending_work,
    reopen_search,
    runtime_from_settings,
    runtime_installed,
    send_work,
)
from swarmq.errors import SwarmqError
from swarmq.settings import Settings

__all__ = ["EmbeddedRunner", "LocalQueue"]

log = logging.getLogger(__name__)


class LocalQueue:
    """An in-process FIFO of task messages: a :class:`swarmq.engine.Dispatcher`."""

    def __init__(self) -> None:
        self.messages: deque[tuple[str, dict[str, Any]]] = deque()

    def send_evaluation(self, search_id: str, iteration: int, particle: int, split: str) -> None:
        self.messages.append(
            (
                "swarmq.evaluate",
                {
                    "search_id": search_id,
                    "iteration": iteration,
                    "particle": particle,
                    "split": split,
                },
            )
        )

    def send_coordination(self, search_id: str, iteration: int) -> None:
        self.messages.append(
            ("swarmq.coordinate", {"search_id": search_id, "iteration": iteration})
        )


class EmbeddedRunner:
    """Runs searches to completion in this process, through the Celery tasks.

    The runner's runtime is current only while :meth:`drive` runs, so several runners (on
    different databases) can live in one program. :meth:`close` releases the database.
    """

    def __init__(self, settings: Settings, *, evaluate: Callable[..., Any] | None = None) -> None:
        self.queue = LocalQueue()
        self.max_attempts = settings.max_attempts
        self.runtime: Runtime = runtime_from_settings(settings, self.queue)
        if evaluate is not None:
            self.runtime.evaluate = evaluate

    def __enter__(self) -> EmbeddedRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the database connections (the record stays; nothing is lost)."""
        self.runtime.db.engine.dispose()

    def submit(self, config: SearchConfig, *, group_id: str | None = None) -> str:
        """Validate and record a new search (of seed group ``group_id``, if given); returns
        its id (nothing runs yet)."""
        return create_search(self.runtime, config, group_id=group_id, runs_here=True)

    def drive(
        self, search_id: str, on_message: Callable[[str, dict[str, Any]], None] | None = None
    ) -> None:
        """Run a search's outstanding work until none is left.

        Evaluations left ``running`` by a killed process are reset first: in embedded mode no
        other process can be working on them. An evaluation that raises an error other than
        swarmq's own is recorded (with its one-line summary) and sent again, until the attempt
        cap fails the search with it as the reason: the loop goes on rather than stop with a
        traceback. swarmq's own errors (bad data, a NaN utility) fail the search at once and
        are raised.

        Only one process drives a search at a time: a second `run`/`resume` of it is refused
        (:class:`swarmq.engine.SearchBusyError`) before it touches anything.
        """
        from swarmq.execution._context import install_embedded_attempts

        install_embedded_attempts(self.max_attempts)
        with driving(self.runtime.db, search_id), runtime_installed(self.runtime):
            self._drive(search_id, on_message)

    def _drive(
        self, search_id: str, on_message: Callable[[str, dict[str, Any]], None] | None
    ) -> None:
        from swarmq.execution import tasks  # registers the tasks with the app

        reopen_search(self.runtime, search_id, reset_running=True)
        self.queue.messages.clear()
        send_work(self.runtime, pending_work(self.runtime, search_id))
        registry = {"swarmq.evaluate": tasks.evaluate, "swarmq.coordinate": tasks.coordinate}
        while self.queue.messages:
            name, kwargs = self.queue.messages.popleft()
            try:
                registry[name].apply(kwargs=kwargs, throw=True)
            except SwarmqError:
                raise
            except Exception as err:
                if name != "swarmq.evaluate":
                    raise
                # Recorded on the evaluation by run_evaluation, and sent again under the cap.
                log.warning(
                    "evaluation of particle %s at iteration %s (%s) failed: %s",
                    kwargs["particle"],
                    kwargs["iteration"],
                    kwargs["split"],
                    one_line(err),
                )
            if on_message is not None:
                on_message(name, kwargs)
