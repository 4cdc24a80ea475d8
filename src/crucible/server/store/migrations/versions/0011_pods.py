"""pods and clusters; hosts.address

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pods",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("app_id", sa.String(32), sa.ForeignKey("apps.id"), nullable=False),
        sa.Column("function_id", sa.String(32), sa.ForeignKey("functions.id"), nullable=False),
        sa.Column("host_id", sa.String(32)),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("run_started_ms", sa.BigInteger(), nullable=False),
        sa.Column("stopped_ms", sa.BigInteger()),
        sa.Column("cluster_id", sa.String(32)),
        sa.Column("rank", sa.Integer()),
        sa.Column("cluster_env", sa.JSON()),
        sa.PrimaryKeyConstraint("id", name="pk_pods"),
    )
    op.create_index("ix_pods_cluster_id", "pods", ["cluster_id"])
    op.create_table(
        "clusters",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("nodes", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("run_started_ms", sa.BigInteger(), nullable=False),
        sa.Column("stopped_ms", sa.BigInteger()),
        sa.PrimaryKeyConstraint("id", name="pk_clusters"),
    )
    op.create_index("ix_clusters_account_id", "clusters", ["account_id"])
    with op.batch_alter_table("hosts") as b:
        b.add_column(sa.Column("address", sa.String(64)))
    op.create_index("ix_pods_account_id", "pods", ["account_id"])
    op.create_index("ix_pods_function_id", "pods", ["function_id"])
    op.create_index("ix_pods_account_name", "pods", ["account_id", "name"])


def downgrade() -> None:
    with op.batch_alter_table("hosts") as b:
        b.drop_column("address")
    op.drop_table("clusters")
    op.drop_table("pods")
