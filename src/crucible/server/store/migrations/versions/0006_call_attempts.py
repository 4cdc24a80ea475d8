"""call_attempts: the earlier attempts of a call, for its timeline

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "call_attempts",
        sa.Column("call_id", sa.String(32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("container_id", sa.String(32)),
        sa.Column("started_ms", sa.BigInteger()),
        sa.Column("ended_ms", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.String(24), nullable=False),
        sa.Column("error", sa.JSON()),
        sa.Column("exec_ms", sa.BigInteger()),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("call_id", "attempt", name="pk_call_attempts"),
    )


def downgrade() -> None:
    op.drop_table("call_attempts")
