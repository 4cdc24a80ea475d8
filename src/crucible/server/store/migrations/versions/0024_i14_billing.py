"""token billing that cannot be abused: a model's context length bounds a request's charge,
and holds reserve a metered request's most before it runs

Revision ID: 0024
Revises: 0022
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # 2048: the engines' default window (inference.config.EngineConfig.max_model_len).
    op.add_column(
        "models",
        sa.Column("context_length", sa.Integer(), nullable=False, server_default="2048"),
    )
    op.create_table(
        "token_holds",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_token_holds"),
    )
    op.create_index("ix_token_holds_account_id", "token_holds", ["account_id"])


def downgrade() -> None:
    op.drop_index("ix_token_holds_account_id", table_name="token_holds")
    op.drop_table("token_holds")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("context_length")
