"""containers.seen_in_sync: the agent sync that first reported a container started, so an
older sync that raced it never takes the container for gone

Revision ID: 0029
Revises: 0028
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN (no batch copy): SQLite keeps the change_seq triggers of 0028.
    op.add_column("containers", sa.Column("seen_in_sync", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    # SQLite 3.35+ drops a column in place (a batch copy would lose 0028's triggers).
    op.execute("ALTER TABLE containers DROP COLUMN seen_in_sync")
