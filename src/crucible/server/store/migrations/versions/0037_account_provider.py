"""accounts.provider: whether the operator approved the account to run other accounts' work
on its hosts (a host of any other account runs its owner's code only, whatever its
isolation). Accounts that own hosts or hold an admin token when this runs are approved, so
an exchange that ran before keeps placing work where it did.

Revision ID: 0037
Revises: 0036
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0037"
down_revision = "0036"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as b:
        b.add_column(sa.Column("provider", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute(
        "UPDATE accounts SET provider = true WHERE id IN (SELECT account_id FROM hosts) "
        "OR id IN (SELECT account_id FROM tokens WHERE scope = 'admin')"
    )


def downgrade() -> None:
    with op.batch_alter_table("accounts") as b:
        b.drop_column("provider")
