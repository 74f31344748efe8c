"""Distributed mode: when each evaluation was last dispatched; coordination attempts.

The reconciler re-dispatches a pending evaluation whose message is missing from the broker only
when its last dispatch is older than a grace period (a message is sent just after its row
commits, so a younger one may simply be on its way). ``NULL`` means "dispatched when created".
``coordination_attempts`` caps the coordinations of an iteration like evaluation attempts: a
coordination that kills its worker every time is given up instead of redelivered forever.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.add_column(sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("iterations") as batch:
        batch.add_column(
            sa.Column("coordination_attempts", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("iterations") as batch:
        batch.drop_column("coordination_attempts")
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("dispatched_at")
