"""replicas.settings_check holds the keys a replica opens too (a rotation of the secrets key
done replica by replica): wider than one fingerprint pair

Revision ID: 0038
Revises: 0037
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0038"
down_revision = "0037"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("replicas") as b:
        b.alter_column(
            "settings_check",
            type_=sa.String(1000),
            existing_type=sa.String(64),
            existing_nullable=False,
            existing_server_default="",
        )


def downgrade() -> None:
    with op.batch_alter_table("replicas") as b:
        b.alter_column(
            "settings_check",
            type_=sa.String(64),
            existing_type=sa.String(1000),
            existing_nullable=False,
            existing_server_default="",
        )
