"""apps.heartbeat_ms: ephemeral apps whose client went away are stopped

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("apps") as batch_op:
        batch_op.add_column(sa.Column("heartbeat_ms", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("apps") as batch_op:
        batch_op.drop_column("heartbeat_ms")
