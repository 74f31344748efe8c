"""One process at a time drives a search in the embedded mode.

`swarmq run` and `swarmq resume` run a search in their own process, and each starts by taking
back the evaluations left ``running`` (in the embedded mode, nobody else can hold them). Two of
them on one search would take each other's work: so each holds a lock on the search while it
drives it, and a second one is refused, naming the search. The lock belongs to the process (an
advisory lock of its PostgreSQL session, or a POSIX record lock on a file beside the SQLite
database), so a killed process releases it at once and `swarmq resume` after a `kill -9` is
never refused.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from swarmq.errors import SwarmqError
from swarmq.storage import Database

__all__ = ["SearchBusyError", "driving"]

# Locks this process holds (POSIX record locks do not conflict within one process).
_held: set[tuple[str, str]] = set()
_guard = threading.Lock()


class SearchBusyError(SwarmqError):
    """Another process is running the search in the embedded mode."""


def _key(search_id: str) -> int:
    """A signed 64-bit key for the search (PostgreSQL advisory locks take a bigint)."""
    digest = hashlib.sha256(f"swarmq-drive:{search_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _busy(search_id: str) -> SearchBusyError:
    return SearchBusyError(
        f"search {search_id} is being run elsewhere (another `swarmq run` or `swarmq resume` "
        f"of it is still going); wait for it to finish, or follow it with: swarmq watch "
        f"{search_id}"
    )


@contextmanager
def driving(db: Database, search_id: str) -> Iterator[None]:
    """Hold the search's drive lock for the block; :class:`SearchBusyError` if it is taken."""
    token = (db.url, search_id)
    with _guard:
        if token in _held:
            raise _busy(search_id)
        _held.add(token)
    try:
        if db.is_sqlite:
            with _sqlite_lock(db, search_id):
                yield
        else:
            with _advisory_lock(db, search_id):
                yield
    finally:
        with _guard:
            _held.discard(token)


@contextmanager
def _advisory_lock(db: Database, search_id: str) -> Iterator[None]:
    key = _key(search_id)
    conn = db.engine.connect()
    try:
        taken = conn.execute(text("select pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        conn.commit()  # the lock is the session's: it outlives this transaction
        if not taken:
            raise _busy(search_id)
        try:
            yield
        finally:
            conn.execute(text("select pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()
    finally:
        conn.close()


@contextmanager
def _sqlite_lock(db: Database, search_id: str) -> Iterator[None]:
    import fcntl

    database = make_url(db.url).database
    if not database or database == ":memory:":
        yield  # an in-memory database lives in this process only
        return
    path = Path(database).expanduser().resolve()
    lock_file = path.with_name(path.name + ".drive-lock")
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    # One byte per search, at an offset derived from its id: searches do not block each other.
    offset = _key(search_id) & 0x7FFFFFFFFF
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except OSError:
            raise _busy(search_id) from None
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)
    finally:
        os.close(fd)
