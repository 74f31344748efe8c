"""The Python front door: run a search and read its results without the command line.

Everything here runs in this process (the embedded mode), exactly as ``swarmq run`` does, and
records into the database the settings name, so ``swarmq status``, ``report`` and ``audit`` see
the same searches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swarmq.config import SearchConfig, load_config
from swarmq.settings import Settings, load_settings

if TYPE_CHECKING:
    from swarmq.engine import FinalReport, SearchSummary
    from swarmq.execution import EmbeddedRunner

__all__ = ["SearchResult", "list_searches", "resume_search", "run_search", "search_result"]


@dataclass(frozen=True)
class SearchResult:
    """Where a search stands and, once an iteration is applied, the paper's final comparison.

    ``final`` holds the best initial expert beside the swarm's global best, each with its dev
    utility and (after the search completes) its test score.
    """

    search_id: str
    summary: SearchSummary
    final: FinalReport | None

    @property
    def status(self) -> str:
        """``running``, ``completed`` or ``failed``."""
        return self.summary.status

    @property
    def stop_reason(self) -> str | None:
        """Why the search stopped (or failed), as ``swarmq status`` shows it."""
        return self.summary.stop_reason


def _settings(settings: Settings | None) -> Settings:
    # The same resolution as the command line without options: environment, file, defaults.
    return settings if settings is not None else load_settings()


def _runner(settings: Settings | None, evaluate: Callable[..., Any] | None) -> EmbeddedRunner:
    from swarmq.execution import EmbeddedRunner

    return EmbeddedRunner(_settings(settings), evaluate=evaluate)


def _result(runner: EmbeddedRunner, search_id: str) -> SearchResult:
    from swarmq.engine import final_report, search_summary

    db = runner.runtime.db
    return SearchResult(search_id, search_summary(db, search_id), final_report(db, search_id))


def run_search(
    config: SearchConfig | str | Path,
    settings: Settings | None = None,
    *,
    evaluate: Callable[..., Any] | None = None,
) -> SearchResult:
    """Record a new search and run it to completion in this process; returns its result.

    ``config`` is a :class:`SearchConfig` or the path of a search file (``.toml``/``.yaml``).
    ``settings`` say where the record goes (default: as the command line resolves them, from
    ``SWARMQ_*`` variables and the defaults). ``evaluate`` replaces the model's scoring of a
    position (the same hook a worker takes), for objectives that need no language model.
    Bad input raises :class:`swarmq.errors.SwarmqError` before anything is recorded. If the
    process dies, :func:`resume_search` continues the search with nothing lost.
    """
    cfg = config if isinstance(config, SearchConfig) else load_config(config)
    with _runner(settings, evaluate) as runner:
        search_id = runner.submit(cfg)
        runner.drive(search_id)
        return _result(runner, search_id)


def resume_search(
    search_id: str,
    settings: Settings | None = None,
    *,
    evaluate: Callable[..., Any] | None = None,
) -> SearchResult:
    """Run a recorded search's outstanding work to completion (after a crash, say)."""
    with _runner(settings, evaluate) as runner:
        runner.drive(search_id)
        return _result(runner, search_id)


def search_result(search_id: str, settings: Settings | None = None) -> SearchResult:
    """Read a search's current result from the record; runs nothing."""
    with _runner(settings, None) as runner:
        return _result(runner, search_id)


def list_searches(settings: Settings | None = None) -> list[SearchSummary]:
    """Every search in the record, oldest first."""
    from swarmq.engine import list_searches as _list

    with _runner(settings, None) as runner:
        return _list(runner.runtime.db)
