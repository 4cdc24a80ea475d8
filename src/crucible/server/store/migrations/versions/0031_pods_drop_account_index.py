"""pods: drop ix_pods_account_id, a prefix of ix_pods_account_name and of
ix_pods_account_state_name (0030), which serve every read by account; each pod's insert
no longer maintains a third index on the same column

Revision ID: 0031
Revises: 0030
"""

from __future__ import annotations

from alembic import op

revision = "0031"
down_revision = "0030"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_pods_account_id", table_name="pods")


def downgrade() -> None:
    op.create_index("ix_pods_account_id", "pods", ["account_id"])
