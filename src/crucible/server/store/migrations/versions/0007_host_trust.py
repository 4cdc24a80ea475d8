"""multi-tenant safety: each host's isolation report and verification; the audit log

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts") as b:
        b.add_column(sa.Column("isolation", sa.JSON()))
        b.add_column(sa.Column("isolated", sa.Boolean(), nullable=False, server_default=sa.false()))
        b.add_column(sa.Column("verified", sa.Boolean(), nullable=False, server_default=sa.false()))
        b.add_column(sa.Column("verification", sa.JSON()))
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("actor_account_id", sa.String(32)),
        sa.Column("actor_token_id", sa.String(32)),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("account_id", sa.String(32)),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_action", "audit_log", ["action", "id"])
    op.create_index("ix_audit_log_ts", "audit_log", ["ts_ms"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_ts", "audit_log")
    op.drop_index("ix_audit_log_action", "audit_log")
    op.drop_table("audit_log")
    with op.batch_alter_table("hosts") as b:
        b.drop_column("verification")
        b.drop_column("verified")
        b.drop_column("isolated")
        b.drop_column("isolation")
