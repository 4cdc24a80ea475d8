"""cluster members' private network: pods.cluster_net

Revision ID: 0019
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0015"  # the lead re-chains migrations at merge
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A placed member's place on its cluster's private network (protocol ClusterNetPlan).
    op.add_column("pods", sa.Column("cluster_net", sa.JSON()))


def downgrade() -> None:
    op.drop_column("pods", "cluster_net")
