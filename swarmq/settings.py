"""Where swarmq keeps its record: database URL and artifact store.

Precedence, highest first: a command-line option (``--db``, ``--artifacts``), the environment
(``SWARMQ_DATABASE_URL``, ``SWARMQ_ARTIFACTS``), then the embedded defaults: a SQLite file and a
folder under ``./.swarmq`` in the current directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings", "load_settings"]

DEFAULT_HOME = Path(".swarmq")


@dataclass(frozen=True)
class Settings:
    """Resolved storage settings."""

    database_url: str
    artifacts: Path


def load_settings(database_url: str | None = None, artifacts: str | Path | None = None) -> Settings:
    """Resolve the settings from explicit values, then the environment, then the defaults."""
    url = database_url or os.environ.get("SWARMQ_DATABASE_URL")
    if not url:
        url = f"sqlite:///{(DEFAULT_HOME / 'swarmq.db').resolve()}"
    store = artifacts or os.environ.get("SWARMQ_ARTIFACTS") or DEFAULT_HOME / "artifacts"
    return Settings(database_url=url, artifacts=Path(store).expanduser().resolve())
