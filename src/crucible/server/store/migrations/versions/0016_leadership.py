"""replicas: leadership (the scheduler's lease row with a fencing epoch); hosts.agent_session;
access_requests (access sessions handed to agents across replicas); replicas (who is alive)

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leadership",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("seen_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "access_requests",
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("host_id", sa.String(32), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("session_id"),
    )
    op.create_index("ix_access_requests_host_id", "access_requests", ["host_id"])
    op.add_column(
        "hosts",
        sa.Column("agent_session", sa.BigInteger(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_column("hosts", "agent_session")
    op.drop_index("ix_access_requests_host_id", table_name="access_requests")
    op.drop_table("access_requests")
    op.drop_table("replicas")
    op.drop_table("leadership")
