"""energy and carbon beside cost: per metered interval, per container, per host

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("meter_intervals") as b:
        b.add_column(sa.Column("energy_mwh", sa.BigInteger(), nullable=False, server_default="0"))
        b.add_column(sa.Column("carbon_mg", sa.BigInteger(), nullable=False, server_default="0"))
        b.add_column(sa.Column("carbon_g_per_kwh", sa.Integer()))
        b.add_column(
            sa.Column("energy_estimated", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("containers") as b:
        b.add_column(sa.Column("energy_mwh", sa.BigInteger()))
        b.add_column(
            sa.Column("energy_estimated", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        b.add_column(
            sa.Column("metered_energy_mwh", sa.BigInteger(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("hosts") as b:
        b.add_column(sa.Column("carbon_now_g_per_kwh", sa.Integer()))
        b.add_column(sa.Column("carbon_note", sa.String(300)))
        b.add_column(
            sa.Column(
                "energy_readings_dropped", sa.BigInteger(), nullable=False, server_default="0"
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("hosts") as b:
        b.drop_column("energy_readings_dropped")
        b.drop_column("carbon_note")
        b.drop_column("carbon_now_g_per_kwh")
    with op.batch_alter_table("containers") as b:
        b.drop_column("metered_energy_mwh")
        b.drop_column("energy_estimated")
        b.drop_column("energy_mwh")
    with op.batch_alter_table("meter_intervals") as b:
        b.drop_column("energy_estimated")
        b.drop_column("carbon_g_per_kwh")
        b.drop_column("carbon_mg")
        b.drop_column("energy_mwh")
