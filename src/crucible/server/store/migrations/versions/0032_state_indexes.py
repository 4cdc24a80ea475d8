"""apps(state, ephemeral, heartbeat_ms) and clusters(state): the scheduler's chores each
tick (retiring versions, silent ephemeral apps, active clusters) read the few rows they look
for instead of every app and every cluster there ever was

Revision ID: 0032
Revises: 0031
"""

from __future__ import annotations

from alembic import op

revision = "0032"
down_revision = "0031"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_apps_state_ephemeral_heartbeat", "apps", ["state", "ephemeral", "heartbeat_ms"]
    )
    op.create_index("ix_clusters_state", "clusters", ["state"])


def downgrade() -> None:
    op.drop_index("ix_clusters_state", table_name="clusters")
    op.drop_index("ix_apps_state_ephemeral_heartbeat", table_name="apps")
