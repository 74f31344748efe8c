"""The asynchronous swarm: the order in which evaluations were applied.

``applications`` holds one row per applied dev evaluation of a search run with
``[swarm] mode = "asynchronous"``: its sequence number (the order the audit replays), the
particle and its own iteration, the global best and worst after it, whether the particle
moved on, and the stop decision where one was taken. A synchronous search writes none.

Revision ID: 0006_applications
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_applications"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "applications",
        sa.Column(
            "search_id",
            sa.String(length=32),
            sa.ForeignKey("searches.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("particle", sa.Integer(), nullable=False),
        sa.Column("utility", sa.Float(), nullable=False),
        sa.Column("best_particle", sa.Integer(), nullable=False),
        sa.Column("best_iteration", sa.Integer(), nullable=False),
        sa.Column("best_utility", sa.Float(), nullable=False),
        sa.Column("best_hash", sa.String(length=64), nullable=False),
        sa.Column("worst_particle", sa.Integer(), nullable=False),
        sa.Column("worst_iteration", sa.Integer(), nullable=False),
        sa.Column("worst_utility", sa.Float(), nullable=False),
        sa.Column("worst_hash", sa.String(length=64), nullable=False),
        sa.Column("moved", sa.Boolean(), nullable=False),
        sa.Column("stop_reason", sa.Text(), nullable=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("search_id", "iteration", "particle", name="uq_application"),
    )


def downgrade() -> None:
    op.drop_table("applications")
