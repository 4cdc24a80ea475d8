"""retention: indexes that find old rows and unreferenced blobs; energy kept on ledger entries

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A charge's energy and emissions, copied from its metered interval when retention
    # prunes the interval, so that statements stay the same.
    with op.batch_alter_table("ledger_entries") as b:
        b.add_column(sa.Column("energy_mwh", sa.BigInteger()))
        b.add_column(sa.Column("carbon_mg", sa.BigInteger()))
    op.create_index("ix_calls_finished", "calls", ["finished_ms"])
    op.create_index("ix_meter_intervals_end", "meter_intervals", ["end_ms"])
    ref = sa.text("input_ref IS NOT NULL")
    op.create_index(
        "ix_calls_input_ref", "calls", ["input_ref"], sqlite_where=ref, postgresql_where=ref
    )
    ref = sa.text("output_ref IS NOT NULL")
    op.create_index(
        "ix_calls_output_ref", "calls", ["output_ref"], sqlite_where=ref, postgresql_where=ref
    )
    ref = sa.text("ref IS NOT NULL")
    op.create_index(
        "ix_call_items_ref", "call_items", ["ref"], sqlite_where=ref, postgresql_where=ref
    )


def downgrade() -> None:
    op.drop_index("ix_call_items_ref", "call_items")
    op.drop_index("ix_calls_output_ref", "calls")
    op.drop_index("ix_calls_input_ref", "calls")
    op.drop_index("ix_meter_intervals_end", "meter_intervals")
    op.drop_index("ix_calls_finished", "calls")
    with op.batch_alter_table("ledger_entries") as b:
        b.drop_column("carbon_mg")
        b.drop_column("energy_mwh")
