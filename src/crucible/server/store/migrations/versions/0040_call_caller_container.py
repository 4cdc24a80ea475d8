"""calls.caller_container_id: the container whose function made the call (a function calling
another of its app), None for a builder's call; a container reads only the calls it made

Revision ID: 0040
Revises: 0039
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0040"
down_revision = "0039"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("calls") as b:
        b.add_column(sa.Column("caller_container_id", sa.String(32)))


def downgrade() -> None:
    with op.batch_alter_table("calls") as b:
        b.drop_column("caller_container_id")
