"""the market: host offers and profile, leases on containers, reservations, the ledger

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("accounts", sa.Column("daily_cap_micros", sa.BigInteger()))
    with op.batch_alter_table("hosts") as b:
        b.add_column(
            sa.Column("energy_source", sa.String(64), nullable=False, server_default="unknown")
        )
        b.add_column(sa.Column("carbon_g_per_kwh", sa.Integer()))
        b.add_column(sa.Column("draining", sa.Boolean(), nullable=False, server_default=sa.false()))
        b.add_column(sa.Column("leases_ended", sa.Integer(), nullable=False, server_default="0"))
        b.add_column(sa.Column("leases_faulted", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("containers") as b:
        b.add_column(sa.Column("tier", sa.String(16), nullable=False, server_default="on_demand"))
        b.add_column(
            sa.Column("unit_price_micros", sa.BigInteger(), nullable=False, server_default="0")
        )
        b.add_column(sa.Column("reservation_id", sa.String(32)))
        b.add_column(
            sa.Column("start_after_ms", sa.BigInteger(), nullable=False, server_default="0")
        )
        b.add_column(sa.Column("lease_end_ms", sa.BigInteger()))
        b.add_column(sa.Column("end_cause", sa.String(32)))
        b.add_column(sa.Column("stop_grace_ms", sa.BigInteger()))
        b.add_column(
            sa.Column("metered_cost_micros", sa.BigInteger(), nullable=False, server_default="0")
        )
        b.add_column(sa.Column("fee_ppm", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("calls") as b:
        b.add_column(sa.Column("preemptions", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "host_offers",
        sa.Column("host_id", sa.String(32), sa.ForeignKey("hosts.id"), nullable=False),
        sa.Column("device_type", sa.String(32), nullable=False),
        sa.Column("on_demand", sa.BigInteger(), nullable=False),
        sa.Column("interruptible_min", sa.BigInteger(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.Column("memory_on_demand", sa.BigInteger(), nullable=False),
        sa.Column("memory_interruptible", sa.BigInteger(), nullable=False),
        sa.Column("memory_reserved", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("host_id", "device_type", name="pk_host_offers"),
    )
    op.create_table(
        "reservations",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("model", sa.String(32), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("blocks", sa.JSON(), nullable=False),
        sa.Column("start_ms", sa.BigInteger(), nullable=False),
        sa.Column("end_ms", sa.BigInteger(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("metered_until_ms", sa.BigInteger()),
        sa.Column("metered_cost_micros", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_reservations"),
    )
    op.create_index("ix_reservations_account_id", "reservations", ["account_id"])
    op.create_index("ix_reservations_end_ms", "reservations", ["end_ms"])
    op.create_table(
        "ledger_entries",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            autoincrement=True,
        ),
        sa.Column("key", sa.String(160), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("memo", sa.Text(), nullable=False),
        sa.Column("renter", sa.String(32)),
        sa.Column("host_id", sa.String(32)),
        sa.Column("app_id", sa.String(32)),
        sa.Column("function_id", sa.String(32)),
        sa.Column("meter", sa.String(40)),
        sa.Column("start_ms", sa.BigInteger()),
        sa.Column("end_ms", sa.BigInteger()),
        sa.Column("cost_micros", sa.BigInteger()),
        sa.Column("reverses", sa.String(160)),
        sa.PrimaryKeyConstraint("seq", name="pk_ledger_entries"),
        sa.UniqueConstraint("key", name="uq_ledger_entries_key"),
    )
    op.create_index("ix_ledger_entries_renter", "ledger_entries", ["renter"])
    op.create_index("ix_ledger_entries_host_id", "ledger_entries", ["host_id"])
    op.create_index("ix_ledger_entries_meter", "ledger_entries", ["meter"])
    op.create_table(
        "ledger_postings",
        sa.Column("entry_key", sa.String(160), sa.ForeignKey("ledger_entries.key"), nullable=False),
        sa.Column("account", sa.String(48), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("entry_key", "account", name="pk_ledger_postings"),
    )
    op.create_index("ix_ledger_postings_account", "ledger_postings", ["account", "amount_micros"])


def downgrade() -> None:
    op.drop_table("ledger_postings")
    op.drop_table("ledger_entries")
    op.drop_table("reservations")
    op.drop_table("host_offers")
    with op.batch_alter_table("calls") as b:
        b.drop_column("preemptions")
    with op.batch_alter_table("containers") as b:
        for c in (
            "fee_ppm",
            "metered_cost_micros",
            "stop_grace_ms",
            "end_cause",
            "lease_end_ms",
            "start_after_ms",
            "reservation_id",
            "unit_price_micros",
            "tier",
        ):
            b.drop_column(c)
    with op.batch_alter_table("hosts") as b:
        for c in (
            "leases_faulted",
            "leases_ended",
            "draining",
            "carbon_g_per_kwh",
            "energy_source",
        ):
            b.drop_column(c)
    op.drop_column("accounts", "daily_cap_micros")
