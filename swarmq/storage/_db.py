"""Database access: engine creation, one-transaction sessions, schema version checks.

One public storage operation is one transaction (:meth:`Database.session`). SQLite is made to
take its write lock at the start of every transaction (``BEGIN IMMEDIATE``) so that a
read-then-write, such as "is this iteration applied yet?", cannot race on it either; on
PostgreSQL the same code takes row locks with ``SELECT ... FOR UPDATE``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, create_engine, event, func, inspect, null, select, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from swarmq.errors import StorageError
from swarmq.storage._models import utcnow

__all__ = ["Database", "database_clock", "database_now", "redact_url"]

# scheme://user:password@host: the user may be empty (Redis: redis://:password@host), and the
# password runs to the last "@" before a blank, so one holding a raw "@" is hidden whole (a
# shorter match would print its tail). URLs inside longer messages are found too.
_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)\S*@")
# A credential in the query string: libpq, psycopg and redis-py all take ?password=...; the
# other names cover libpq's sslpassword and the tokens and secrets of other URL forms. The
# value runs to the next parameter, fragment, quote or blank.
_QUERY_SECRET = re.compile(
    r"([?&;][^=&;#\s'\"]*(?:pass|pwd|secret|token|credential|auth)[^=&;#\s'\"]*=)"
    r"[^&;#\s'\"]*",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """The URL (or a message holding URLs) with every credential replaced by ``***``: the
    password of its user-info part and any credential-bearing query parameter
    (``?password=``, ``&sslpassword=``, ``?token=``...).

    The one place swarmq hides credentials: the settings table, errors and the worker's banner
    all go through it.
    """
    text = _PASSWORD.sub(r"\1***@", str(url))
    if "=" not in text:
        return text
    return _QUERY_SECRET.sub(r"\1***", text)


def database_now(session: Session) -> datetime:
    """The time by the database server's clock (PostgreSQL), or by this process's (SQLite).

    A running evaluation's lease (its claim and its heartbeats) is stamped with this clock and
    the reconciler judges it by the same one, so the machines' own clocks need not agree: with
    a heartbeat timeout of seconds, a worker whose clock runs a few seconds behind the
    coordinator's would otherwise look dead while it works. SQLite's writers all share one
    machine, hence one clock.
    """
    if session.get_bind().dialect.name == "postgresql":
        moment = session.scalar(text("SELECT clock_timestamp()"))
        if isinstance(moment, datetime):
            return moment
    return utcnow()


def database_clock(session: Session) -> ColumnElement[Any]:
    """:func:`database_now` as a column to select along with something else (no round trip of
    its own): the server's clock on PostgreSQL, NULL on SQLite (the caller then takes
    :func:`utcnow`)."""
    if session.get_bind().dialect.name == "postgresql":
        return func.clock_timestamp()
    return null()


def migrations_dir() -> Path:
    """The Alembic scripts: the repository's ``migrations/`` or the installed copy."""
    here = Path(__file__).resolve().parents[2] / "migrations"
    if (here / "env.py").is_file():
        return here
    import swarmq._migrations as installed  # installed from the same folder by pyproject.toml

    return Path(next(iter(installed.__path__)))


class Database:
    """An engine and a session factory for one database URL."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise StorageError(
                f"database URL {redact_url(url)!r} is not a SQLAlchemy URL; "
                "examples: sqlite:///swarmq.db, postgresql+psycopg://user@host/db"
            ) from None
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                folder = Path(parsed.database).expanduser().resolve().parent
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as err:
                    raise StorageError(
                        f"cannot create the folder {str(folder)!r} of SQLite database "
                        f"{redact_url(url)}: {err.strerror} (a file may stand where a folder "
                        "should be); give another path with --db or SWARMQ_DATABASE_URL"
                    ) from None
            kwargs["connect_args"] = {"timeout": 60}
        else:
            kwargs["pool_pre_ping"] = True  # survive a database restart between tasks
        try:
            self.engine: Engine = create_engine(url, **kwargs)
        except (SQLAlchemyError, ImportError) as err:
            raise StorageError(f"cannot use database {redact_url(url)}: {err}") from None
        if self.is_sqlite:
            _sqlite_immediate_transactions(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._identity: str | None = None

    def describe(self) -> str:
        return redact_url(self.url)

    def identity(self) -> str:
        """The database's identity (made by ``swarmq db upgrade``), read once per object.

        Two databases never share one, even on one server: task messages carry it, so a worker
        can tell work of its own database from work it cannot place.
        """
        if self._identity is None:
            from swarmq.storage._models import DatabaseIdentityRow

            with self.session() as s:
                found = s.scalars(
                    select(DatabaseIdentityRow.id).order_by(DatabaseIdentityRow.created_at)
                ).first()
            if found is None:
                raise StorageError(
                    f"database {self.describe()} has no identity row; run: swarmq db upgrade "
                    f"--db {self.describe()!r}"
                )
            self._identity = found
        return self._identity

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: commits on success, rolls back on error, always closes.

        Database errors become :class:`StorageError` with the (redacted) URL in the message.
        """
        session = self._sessions()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as err:
            session.rollback()
            raise StorageError(
                f"database {self.describe()}: {err.__class__.__name__}: {err}"
            ) from err
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def statement(self) -> Iterator[Connection]:
        """A connection for ONE statement that is its own transaction (autocommit).

        No ``BEGIN`` and ``COMMIT`` round trips around it: for a single ``UPDATE ...
        RETURNING`` that checks and changes a row at once, which is atomic by itself. Database
        errors become :class:`StorageError`, as in :meth:`session`. On SQLite it is an
        ordinary transaction.
        """
        try:
            with self.engine.connect() as conn:
                if self.is_sqlite:
                    with conn.begin():
                        yield conn
                else:
                    yield conn.execution_options(isolation_level="AUTOCOMMIT")
        except SQLAlchemyError as err:
            raise StorageError(
                f"database {self.describe()}: {err.__class__.__name__}: {err}"
            ) from err

    def for_update(self) -> dict[str, Any]:
        """Keyword arguments for ``select(...).with_for_update(**...)`` on this backend."""
        return {}

    # --- schema -------------------------------------------------------------------------------

    def _alembic_config(self) -> Any:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(migrations_dir()))
        cfg.attributes["url"] = self.url
        cfg.attributes["engine"] = self.engine
        return cfg

    def upgrade(self, revision: str = "head") -> None:
        """Apply the migrations up to ``revision`` (``swarmq db upgrade``)."""
        from alembic import command

        try:
            command.upgrade(self._alembic_config(), revision)
        except SQLAlchemyError as err:
            raise StorageError(f"cannot upgrade database {self.describe()}: {err}") from None

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        try:
            with self.engine.connect() as conn:
                return MigrationContext.configure(conn).get_current_revision()
        except SQLAlchemyError as err:
            raise StorageError(f"cannot reach database {self.describe()}: {err}") from None

    def head_revision(self) -> str | None:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self._alembic_config()).get_current_head()

    def check_schema(self, *, create: bool = False) -> None:
        """Fail with the upgrade command unless the schema is at the latest revision.

        ``create=True`` upgrades an empty database (no tables at all) in place, so the first
        command on a new SQLite file works; a database at an older revision is never upgraded
        behind the user's back.
        """
        current = self.current_revision()
        head = self.head_revision()
        if current == head:
            return
        if current is None and create:
            try:
                empty = not inspect(self.engine).get_table_names()
            except SQLAlchemyError as err:
                raise StorageError(f"cannot reach database {self.describe()}: {err}") from None
            if empty:
                try:
                    self.upgrade()
                    return
                except StorageError:
                    pass  # another process created the schema first: judged just below
            # Two commands started on one new database at once: the other one created the
            # schema between the two reads above. Its revision is the one to judge.
            current = self.current_revision()
            if current == head:
                return
        raise StorageError(
            f"database {self.describe()} is at schema revision {current or 'none'}, swarmq needs "
            f"{head}; run: swarmq db upgrade --db {self.describe()!r}"
        )


def _sqlite_immediate_transactions(engine: Engine) -> None:
    # pysqlite's own transaction handling starts transactions lazily and never as IMMEDIATE;
    # take over so that every transaction holds the write lock from its first statement.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
