"""functions.spec_rev: a function's spec version, so its parsed spec is cached by id+version

Revision ID: 0027
Revises: 0024
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Bumped by every write of functions.spec: readers keep the typed spec they parsed for
    # (id, spec_rev) and read the JSON again only when the version moved.
    with op.batch_alter_table("functions") as batch:
        batch.add_column(sa.Column("spec_rev", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("functions") as batch:
        batch.drop_column("spec_rev")
