"""deployments (named, versioned apps), functions.warm, log lines, generator items

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("current_app_id", sa.String(32)),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_deployments"),
        sa.UniqueConstraint("account_id", "name", name="uq_deployments_account_id_name"),
    )
    with op.batch_alter_table("apps") as b:
        b.add_column(sa.Column("deployment_id", sa.String(32)))
        b.add_column(sa.Column("version", sa.Integer()))
        b.create_index("ix_apps_deployment_id", ["deployment_id"])
    with op.batch_alter_table("functions") as b:
        b.add_column(sa.Column("warm", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "log_lines",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("app_id", sa.String(32), nullable=False),
        sa.Column("function_id", sa.String(32), nullable=False),
        sa.Column("container_id", sa.String(32), nullable=False),
        sa.Column("call_id", sa.String(32)),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("stream", sa.String(8), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_log_lines"),
    )
    op.create_index("ix_log_lines_app", "log_lines", ["app_id", "id"])
    op.create_index("ix_log_lines_call", "log_lines", ["call_id", "id"])
    op.create_table(
        "call_inbox",
        sa.Column("call_id", sa.String(32), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("call_id", "idx", name="pk_call_inbox"),
    )
    op.create_table(
        "call_items",
        sa.Column("call_id", sa.String(32), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary()),
        sa.Column("ref", sa.String(64)),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("call_id", "idx", name="pk_call_items"),
    )


def downgrade() -> None:
    op.drop_table("call_items")
    op.drop_table("call_inbox")
    op.drop_table("log_lines")
    with op.batch_alter_table("functions") as b:
        b.drop_column("warm")
    with op.batch_alter_table("apps") as b:
        b.drop_index("ix_apps_deployment_id")
        b.drop_column("version")
        b.drop_column("deployment_id")
    op.drop_table("deployments")
