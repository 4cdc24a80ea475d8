"""fine-tuning jobs: fine_tunes

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
# The lead re-chains migrations at merge; on this branch it follows 0013 (models), whose
# table it references, so that "upgrade head" has a single head.
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fine_tunes",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("model_id", sa.String(32), sa.ForeignKey("models.id"), nullable=False),
        sa.Column("adapter", sa.String(128), nullable=False),
        sa.Column("call_id", sa.String(32), nullable=False),
        sa.Column("app_id", sa.String(32), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("registered", sa.Boolean(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_fine_tunes_account", "fine_tunes", ["account_id", "created_ms"])
    op.create_index("ix_fine_tunes_model_adapter", "fine_tunes", ["model_id", "adapter"])


def downgrade() -> None:
    op.drop_index("ix_fine_tunes_model_adapter", table_name="fine_tunes")
    op.drop_index("ix_fine_tunes_account", table_name="fine_tunes")
    op.drop_table("fine_tunes")
