"""ssh_keys (accounts' SSH public keys, for SSH into their containers)

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ssh_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("key_type", sa.String(64), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ssh_keys"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_ssh_keys_account_id_accounts"
        ),
        sa.UniqueConstraint("account_id", "fingerprint", name="uq_ssh_keys_account_id_fingerprint"),
    )
    op.create_index("ix_ssh_keys_account_id", "ssh_keys", ["account_id"])


def downgrade() -> None:
    op.drop_table("ssh_keys")
