"""Initial schema: searches, particles, iterations, particle states, evaluations, artifacts.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "artifacts",
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("nbytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("hash"),
    )
    op.create_table(
        "searches",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stop_reason", sa.Text(), nullable=True),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("config_hash", sa.String(length=64), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("n_particles", sa.Integer(), nullable=False),
        sa.Column("n_experts", sa.Integer(), nullable=False),
        sa.Column("layout_json", sa.Text(), nullable=False),
        sa.Column("adapter_config_json", sa.Text(), nullable=True),
        sa.Column("current_iteration", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_searches_status"), "searches", ["status"], unique=False)
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("search_id", sa.String(length=32), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("particle", sa.Integer(), nullable=False),
        sa.Column("split", sa.String(length=8), nullable=False),
        sa.Column("position_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("utility", sa.Float(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["search_id"], ["searches.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("search_id", "iteration", "particle", "split", name="uq_evaluation"),
    )
    op.create_index(
        "ix_evaluations_search_status", "evaluations", ["search_id", "status"], unique=False
    )
    op.create_table(
        "iterations",
        sa.Column("search_id", sa.String(length=32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("step_length", sa.Float(), nullable=True),
        sa.Column("skipped_all", sa.Boolean(), nullable=False),
        sa.Column("best_particle", sa.Integer(), nullable=True),
        sa.Column("best_iteration", sa.Integer(), nullable=True),
        sa.Column("best_utility", sa.Float(), nullable=True),
        sa.Column("best_hash", sa.String(length=64), nullable=True),
        sa.Column("worst_particle", sa.Integer(), nullable=True),
        sa.Column("worst_iteration", sa.Integer(), nullable=True),
        sa.Column("worst_utility", sa.Float(), nullable=True),
        sa.Column("worst_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["search_id"], ["searches.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("search_id", "number"),
    )
    op.create_table(
        "particles",
        sa.Column("search_id", sa.String(length=32), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("expert_name", sa.String(length=500), nullable=True),
        sa.Column("parent_first", sa.Integer(), nullable=True),
        sa.Column("parent_second", sa.Integer(), nullable=True),
        sa.Column("parent_weight", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["search_id"], ["searches.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("search_id", "index"),
    )
    op.create_table(
        "particle_states",
        sa.Column("search_id", sa.String(length=32), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("particle", sa.Integer(), nullable=False),
        sa.Column("position_hash", sa.String(length=64), nullable=False),
        sa.Column("velocity_hash", sa.String(length=64), nullable=True),
        sa.Column("restarted", sa.Boolean(), nullable=False),
        sa.Column("update", sa.JSON(), nullable=True),
        sa.Column("utility", sa.Float(), nullable=True),
        sa.Column("evaluated", sa.Boolean(), nullable=True),
        sa.Column("best_hash", sa.String(length=64), nullable=True),
        sa.Column("best_utility", sa.Float(), nullable=True),
        sa.Column("best_iteration", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["search_id", "iteration"],
            ["iterations.search_id", "iterations.number"],
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("search_id", "iteration", "particle"),
    )


def downgrade() -> None:
    op.drop_table("particle_states")
    op.drop_table("particles")
    op.drop_table("iterations")
    op.drop_index("ix_evaluations_search_status", table_name="evaluations")
    op.drop_table("evaluations")
    op.drop_index(op.f("ix_searches_status"), table_name="searches")
    op.drop_table("searches")
    op.drop_table("artifacts")
