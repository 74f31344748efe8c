"""The record: migrations, the artifact store, and sessions on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import inspect, select

from swarmq.errors import ArtifactError, StorageError
from swarmq.storage import Database, LocalArtifactStore, SearchRow, redact_url

TABLES = {
    "searches",
    "particles",
    "iterations",
    "particle_states",
    "evaluations",
    "artifacts",
    "alembic_version",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "sqlite":
        return Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    return Database(request.getfixturevalue("postgres_url"))


def test_upgrade_creates_the_schema(database: Database) -> None:
    assert database.current_revision() is None
    database.upgrade()
    assert set(inspect(database.engine).get_table_names()) >= TABLES
    assert database.current_revision() == database.head_revision()
    database.check_schema()  # no error at head


def test_old_schema_is_refused_with_the_command(database: Database) -> None:
    database.upgrade()
    with database.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'older'")
    with pytest.raises(StorageError, match="swarmq db upgrade"):
        database.check_schema(create=True)


def test_a_database_before_the_baselines_table_is_upgraded(database: Database) -> None:
    database.upgrade("0001")  # a database made before the baselines table existed
    assert "baselines" not in inspect(database.engine).get_table_names()
    with pytest.raises(StorageError, match="swarmq db upgrade"):
        database.check_schema(create=True)
    database.upgrade()
    assert "baselines" in inspect(database.engine).get_table_names()
    database.check_schema()


def test_every_migration_upgrades_and_downgrades(database: Database) -> None:
    """Walk the whole chain up, down to nothing and up again: each step runs on both backends."""
    from alembic import command
    from alembic.script import ScriptDirectory

    config = database._alembic_config()
    revisions = [r.revision for r in ScriptDirectory.from_config(config).walk_revisions()]
    assert len(ScriptDirectory.from_config(config).get_heads()) == 1, "the chain has branched"
    for revision in reversed(revisions):
        database.upgrade(revision)
        assert database.current_revision() == revision
    command.downgrade(config, "base")
    assert set(inspect(database.engine).get_table_names()) <= {"alembic_version"}
    database.upgrade()
    assert database.current_revision() == database.head_revision()
    database.check_schema()


def test_empty_database_is_created_on_demand(database: Database) -> None:
    database.check_schema(create=True)
    assert database.current_revision() == database.head_revision()


def test_session_rolls_back_and_names_the_database(database: Database) -> None:
    database.upgrade()
    row = dict(
        name="x",
        status="running",
        config_json="{}",
        config_hash="h",
        seed=0,
        n_particles=2,
        n_experts=2,
        layout_json="[]",
    )
    with database.session() as s:
        s.add(SearchRow(id="a", **row))
    with pytest.raises(StorageError, match="IntegrityError"), database.session() as s:
        s.add(SearchRow(id="a", **row))  # duplicate primary key
    with database.session() as s:
        assert s.scalars(select(SearchRow.id)).all() == ["a"]


def test_bad_url_is_named() -> None:
    with pytest.raises(StorageError, match="not a SQLAlchemy URL"):
        Database("not a url")


def test_passwords_are_redacted() -> None:
    assert redact_url("postgresql+psycopg://u:secret@h/db") == "postgresql+psycopg://u:***@h/db"
    assert "secret" not in Database("postgresql+psycopg://u:secret@127.0.0.1:1/db").describe()


def test_artifacts_are_content_addressed_and_verified(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    v = np.arange(10, dtype=np.float32)
    digest = store.put_vector(v)
    assert store.put_vector(v.copy()) == digest  # same content, same name
    np.testing.assert_array_equal(store.get_vector(digest), v)
    path = tmp_path / "store" / digest[:2] / f"{digest}.safetensors"
    assert path.is_file() and not list(path.parent.glob(".tmp-*"))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="corrupted"):
        store.get_vector(digest)


def test_artifact_paths_stay_in_the_store(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    for bad in ("../../etc/passwd", "A" * 64, "ab"):
        with pytest.raises(ArtifactError, match="not an artifact hash"):
            store.get_vector(bad)
    with pytest.raises(ArtifactError, match="missing"):
        store.get_vector("0" * 64)


def test_unwritable_store_is_a_clear_error(tmp_path: Path) -> None:
    # A file where the store's folder should be: fails for root too, unlike a chmod.
    blocker = tmp_path / "store"
    blocker.write_text("not a folder")
    with pytest.raises(ArtifactError, match="writable"):
        LocalArtifactStore(blocker).put_vector(np.zeros(3, dtype=np.float32))
