"""pods by state: the scheduler settles the active and stopping pods every tick

Revision ID: 0022
Revises: 0017
"""

from __future__ import annotations

from alembic import op

revision = "0022"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Without it every tick read every pod ever created (settled and deleted ones stay).
    op.create_index("ix_pods_state", "pods", ["state"])


def downgrade() -> None:
    op.drop_index("ix_pods_state", table_name="pods")
