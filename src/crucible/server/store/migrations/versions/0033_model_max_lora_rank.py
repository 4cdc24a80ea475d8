"""models.max_lora_rank: the highest LoRA rank a model's engine serves, so that adapters and
fine-tunes of a higher rank are refused before anything is uploaded or trained

Revision ID: 0033
Revises: 0032
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0033"
down_revision = "0032"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # 64: the engines' default (inference.config.EngineConfig.max_lora_rank).
    op.add_column(
        "models", sa.Column("max_lora_rank", sa.Integer(), nullable=False, server_default="64")
    )


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("max_lora_rank")
