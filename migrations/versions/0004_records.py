"""Per-item scores of every evaluation, baseline trials, and seed groups.

* ``evaluations.item_scores`` and ``baselines.item_scores``: one score per example, in a compact
  binary form (``swarmq.storage.encode_item_scores``), so that paired bootstrap intervals need no
  evaluation again;
* ``baselines.trial``: 0 for a baseline's result on a split, 1, 2, ... for the candidates a
  baseline evaluated on dev while choosing (greedy soup, merge scales, LoraHub); the unique
  constraint now includes it;
* ``searches.group_id``: the searches of one search file run over several seeds
  (``swarmq run --seeds``), one per seed.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("evaluations", sa.Column("item_scores", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("baselines") as batch:  # no children: a rebuild is safe
        batch.add_column(sa.Column("trial", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("item_scores", sa.LargeBinary(), nullable=True))
        batch.drop_constraint("uq_baseline", type_="unique")
        batch.create_unique_constraint("uq_baseline", ["search_id", "name", "split", "trial"])
    # searches has children (ON DELETE CASCADE): it must not be rebuilt the SQLite way (copy,
    # drop, rename) with foreign keys on, so only an added column and a unique index here.
    op.add_column("searches", sa.Column("group_id", sa.String(length=64), nullable=True))
    op.create_index("uq_search_group_seed", "searches", ["group_id", "seed"], unique=True)


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite 3.35+), not a batch rebuild: see upgrade().
    op.drop_index("uq_search_group_seed", table_name="searches")
    op.drop_column("searches", "group_id")
    op.drop_column("evaluations", "item_scores")
    # Only the results fit the old constraint; the candidates go.
    op.execute("DELETE FROM baselines WHERE trial <> 0")
    with op.batch_alter_table("baselines") as batch:  # no children: a rebuild is safe
        batch.drop_constraint("uq_baseline", type_="unique")
        batch.create_unique_constraint("uq_baseline", ["search_id", "name", "split"])
        batch.drop_column("item_scores")
        batch.drop_column("trial")
