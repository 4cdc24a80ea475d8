"""ledger charges keep their lease's device type and tier once retention deletes the
container (a stopped app's containers go with its functions)

Revision ID: 0039
Revises: 0038
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0039"
down_revision = "0038"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ledger_entries") as b:
        b.add_column(sa.Column("device_type", sa.String(32)))
        b.add_column(sa.Column("tier", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("ledger_entries") as b:
        b.drop_column("tier")
        b.drop_column("device_type")
