"""Column lists and queries that several reports read the same way."""

from __future__ import annotations

from sqlalchemy import Select, select

from swarmq.storage import ParticleRow, ParticleStateRow

#: A particle state as the audit and the history read it: its place, the artifacts it points
#: at, the update it recorded and the bests after it.
STATE_COLUMNS = (
    ParticleStateRow.iteration,
    ParticleStateRow.particle,
    ParticleStateRow.position_hash,
    ParticleStateRow.velocity_hash,
    ParticleStateRow.restarted,
    ParticleStateRow.update,
    ParticleStateRow.utility,
    ParticleStateRow.evaluated,
    ParticleStateRow.best_hash,
    ParticleStateRow.best_utility,
    ParticleStateRow.best_iteration,
)


def lineage_query(
    search_id: str,
) -> Select[int, str | None, int | None, int | None, float | None]:
    """Each particle's index, expert name and crossover parents, in index order."""
    return (
        select(
            ParticleRow.index,
            ParticleRow.expert_name,
            ParticleRow.parent_first,
            ParticleRow.parent_second,
            ParticleRow.parent_weight,
        )
        .where(ParticleRow.search_id == search_id)
        .order_by(ParticleRow.index)
    )
