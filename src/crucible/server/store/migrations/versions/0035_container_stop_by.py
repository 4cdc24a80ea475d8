"""containers.stop_by_ms: when a container asked to stop is billed no longer (the stop's
grace and an allowance past the moment it was asked), so that a host that keeps reporting a
stopped container as running is not paid for it

Revision ID: 0035
Revises: 0034
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0035"
down_revision = "0034"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("containers") as batch:
        batch.add_column(sa.Column("stop_by_ms", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("containers") as batch:
        batch.drop_column("stop_by_ms")
