"""pods(account_id, state, name): a submission counts the account's pods (and those of its
name) from the index alone

Revision ID: 0030
Revises: 0029
"""

from __future__ import annotations

from alembic import op

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_pods_account_state_name", "pods", ["account_id", "state", "name"])


def downgrade() -> None:
    op.drop_index("ix_pods_account_state_name", table_name="pods")
