"""The database's identity: one random id, made when the schema is created or upgraded.

Every task message carries the identity of the database its work is recorded in, and a worker
whose own database has another identity refuses the message back to the queue instead of
failing on rows it cannot find (which would acknowledge, and so drop, the work).

Revision ID: 0005_identity
Revises: 0006_applications
Create Date: 2026-12-02
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0005_identity"
down_revision = "0006_applications"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "database_identity",
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.bulk_insert(table, [{"id": uuid.uuid4().hex, "created_at": datetime.now(UTC)}])


def downgrade() -> None:
    op.drop_table("database_identity")
