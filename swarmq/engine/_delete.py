"""Deleting a search from the record (``swarmq delete``)."""

from __future__ import annotations

from sqlalchemy import delete

from swarmq.engine._common import search_in_txn
from swarmq.errors import SwarmqError
from swarmq.storage import Base, Database, SearchRow

__all__ = ["delete_search"]


def delete_search(db: Database, search_id: str) -> dict[str, int]:
    """Delete ``search_id`` and every row of it, in one transaction; returns rows per table.

    A running search is refused: its workers would lose the rows under them; cancel it first.
    The artifact files stay: they are addressed by content and another search may share them.
    Child rows are deleted explicitly rather than by the foreign keys' cascade, which SQLite
    applies only when foreign keys are switched on for the connection.
    """
    with db.session() as s:
        search = search_in_txn(s, search_id, lock=True)
        if search.status == "running":
            raise SwarmqError(
                f"search {search_id!r} is running; stop it first (swarmq cancel {search_id}), "
                "then delete it"
            )
        counts: dict[str, int] = {}
        # Every table holding rows of a search, children before parents, so that a table
        # added later is deleted from too.
        for table in reversed(Base.metadata.sorted_tables):
            if table.name == SearchRow.__tablename__ or "search_id" not in table.c:
                continue
            result = s.execute(delete(table).where(table.c.search_id == search_id))
            counts[table.name] = int(getattr(result, "rowcount", 0) or 0)
        s.execute(delete(SearchRow).where(SearchRow.id == search_id))
        counts[SearchRow.__tablename__] = 1
        return counts
