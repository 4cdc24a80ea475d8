"""request_keys: the idempotency keys of the routes that make something anew (a pod, a
reservation, a grant), so that a client that did not hear the answer can send the request
again and get the first answer instead of a second pod

Revision ID: 0036
Revises: 0035
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0036"
down_revision = "0035"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "request_keys",
        sa.Column("account_id", sa.String(32), primary_key=True),
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("route", sa.String(300), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_request_keys_created_ms", "request_keys", ["created_ms"])


def downgrade() -> None:
    op.drop_index("ix_request_keys_created_ms", table_name="request_keys")
    op.drop_table("request_keys")
