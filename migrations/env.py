"""Alembic environment for swarmq.

The URL comes from ``config.attributes["url"]`` when swarmq runs the migration itself, else from
the ``SWARMQ_DATABASE_URL`` environment variable (plain ``alembic upgrade head``).
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

config = context.config
url = config.attributes.get("url") or os.environ.get("SWARMQ_DATABASE_URL")
if not url:
    raise SystemExit("set SWARMQ_DATABASE_URL to the database to migrate")

# Migrations freeze their own table definitions; no metadata is imported from the package.
target_metadata = None


def run_migrations_offline() -> None:
    context.configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = config.attributes.get("engine") or create_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection, render_as_batch=connection.dialect.name == "sqlite"
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
