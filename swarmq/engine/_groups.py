"""Seed groups: one search file run once per seed (``swarmq run CONFIG --seeds 0,1,2``).

The searches of a group are ordinary recorded searches whose rows carry the group's id; a
unique constraint on (group, seed) keeps one search per seed. The id is a hash of the search
file's recorded configuration with its seed left out (and of an optional label), so running the
same command again finds the group and continues it: completed seeds are kept, an interrupted
one resumes, missing ones are created.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from sqlalchemy import select

from swarmq.config import SearchConfig
from swarmq.errors import ConfigError
from swarmq.storage import Database, SearchRow

__all__ = ["GroupMember", "group_members", "seed_group_id", "with_seed"]


def with_seed(config: SearchConfig, seed: int) -> SearchConfig:
    """``config`` with ``search.seed`` replaced (validated like a seed in the file)."""
    data = json.loads(config.to_json())
    data["search"]["seed"] = seed
    try:
        return SearchConfig.model_validate(data)
    except ValueError as err:
        raise ConfigError(f"seed {seed!r} is not a valid search.seed: {err}") from None


def seed_group_id(config: SearchConfig, label: str | None = None) -> str:
    """The group id of ``config`` over seeds: sha256 of its configuration without the seed
    (and of ``label``, which tells apart two groups of the same file), 24 hex digits."""
    data = json.loads(config.to_json())
    data["search"].pop("seed", None)
    text = json.dumps({"config": data, "label": label or ""}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class GroupMember:
    """A search of a seed group."""

    seed: int
    search_id: str
    status: str


def group_members(db: Database, group_id: str) -> dict[int, GroupMember]:
    """The searches of a group, by seed."""
    with db.session() as s:
        rows = s.execute(
            select(SearchRow.seed, SearchRow.id, SearchRow.status).where(
                SearchRow.group_id == group_id
            )
        ).all()
    return {int(seed): GroupMember(int(seed), str(sid), str(st)) for seed, sid, st in rows}
