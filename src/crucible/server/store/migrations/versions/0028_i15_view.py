"""change_seq on hosts, containers, functions and apps: what changed since the scheduler
last read

Revision ID: 0028
Revises: 0027
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None

# The columns placement reads from each table: a write of any of them bumps the row's
# change_seq (hosts.last_seen_ms is left out: heartbeats would make every host "changed").
# Keep in step with server/scheduler/fleet_view.py.
WATCHED = {
    "hosts": (
        "account_id",
        "region",
        "state",
        "inventory",
        "energy_source",
        "carbon_g_per_kwh",
        "carbon_now_g_per_kwh",
        "draining",
        "leases_ended",
        "leases_faulted",
        "agent_session",
        "isolation",
        "isolated",
        "verified",
    ),
    "containers": (
        "function_id",
        "host_id",
        "state",
        "created_ms",
        "last_active_ms",
        "ready_ms",
        "cpu",
        "memory_mib",
        "gpu_indices",
        "gpu_model",
        "lease_end_ms",
    ),
    "functions": ("account_id", "app_id", "spec_rev", "warm"),
    "apps": ("state",),
}
# Held shared by every writer of a watched column until it commits, taken exclusively for
# an instant by the scheduler's view (fleet_view.CHANGES_LOCK): once it has it, every
# change number handed out so far belongs to a finished transaction.
CHANGES_LOCK = 0x6372_7563_7669_6577


def upgrade() -> None:
    for table in WATCHED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("change_seq", sa.BigInteger(), nullable=False, server_default="0")
            )
        op.create_index(f"ix_{table}_change_seq", table, ["change_seq"])
    op.create_table(
        "change_counters",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(
        sa.table("change_counters", sa.column("name", sa.String), sa.column("n", sa.BigInteger)),
        [{"name": table, "n": 0} for table in WATCHED],
    )
    if op.get_bind().dialect.name == "postgresql":
        _postgresql()
    else:
        _sqlite()


def _postgresql() -> None:
    # A sequence per table: nextval never waits on another writer (a counter row would make
    # every container write of every replica queue on one row lock).
    for table, cols in WATCHED.items():
        op.execute(f"CREATE SEQUENCE {table}_change_seq")
        op.execute(
            f"""
            CREATE FUNCTION {table}_changed() RETURNS trigger AS $$
            BEGIN
                PERFORM pg_advisory_xact_lock_shared({CHANGES_LOCK});
                NEW.change_seq := nextval('{table}_change_seq');
                RETURN NEW;
            END $$ LANGUAGE plpgsql
            """
        )
        op.execute(
            f"CREATE TRIGGER {table}_changed BEFORE INSERT OR UPDATE OF {', '.join(cols)} "
            f"ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_changed()"
        )


def _sqlite() -> None:
    # SQLite has one writer at a time: numbers are handed out in commit order.
    for table, cols in WATCHED.items():
        bump = f"""
            UPDATE change_counters SET n = n + 1 WHERE name = '{table}';
            UPDATE {table} SET change_seq = (SELECT n FROM change_counters WHERE name = '{table}')
            WHERE rowid = NEW.rowid;
        """
        op.execute(f"CREATE TRIGGER {table}_inserted AFTER INSERT ON {table} BEGIN {bump} END")
        op.execute(
            f"CREATE TRIGGER {table}_changed AFTER UPDATE OF {', '.join(cols)} ON {table} "
            f"BEGIN {bump} END"
        )


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table in WATCHED:
        if postgresql:
            op.execute(f"DROP TRIGGER {table}_changed ON {table}")
            op.execute(f"DROP FUNCTION {table}_changed()")
            op.execute(f"DROP SEQUENCE {table}_change_seq")
        else:
            op.execute(f"DROP TRIGGER {table}_inserted")
            op.execute(f"DROP TRIGGER {table}_changed")
        op.drop_index(f"ix_{table}_change_seq", table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("change_seq")
    op.drop_table("change_counters")
