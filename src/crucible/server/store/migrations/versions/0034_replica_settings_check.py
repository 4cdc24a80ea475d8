"""replicas.settings_check: a fingerprint of what every replica of one exchange must share
(the secret that signs container tokens, the key that seals new secrets), so that a replica
started with other ones is refused instead of failing tenants' calls

Revision ID: 0034
Revises: 0033
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0034"
down_revision = "0033"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "replicas",
        sa.Column("settings_check", sa.String(64), nullable=False, server_default=""),
    )


def downgrade() -> None:
    with op.batch_alter_table("replicas") as batch:
        batch.drop_column("settings_check")
