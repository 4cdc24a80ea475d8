"""cluster members' private network: pods.cluster_net; containers.pulling_ms

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A placed member's place on its cluster's private network (protocol ClusterNetPlan).
    op.add_column("pods", sa.Column("cluster_net", sa.JSON()))
    # When its host first reported it pulling its OCI image (None: not reported so).
    op.add_column("containers", sa.Column("pulling_ms", sa.BigInteger()))


def downgrade() -> None:
    op.drop_column("containers", "pulling_ms")
    op.drop_column("pods", "cluster_net")
