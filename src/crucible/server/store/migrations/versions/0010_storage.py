"""secrets, schedules, dicts, queues and volumes; calls.tick_ms

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _id() -> sa.Column[int]:
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True)


def upgrade() -> None:
    with op.batch_alter_table("calls") as b:
        b.add_column(sa.Column("tick_ms", sa.BigInteger()))
    op.create_table(
        "secrets",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("app_id", sa.String(32)),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("keys", sa.JSON(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_secrets"),
        sa.UniqueConstraint("account_id", "name", name="uq_secrets_account_id_name"),
    )
    op.create_index("ix_secrets_app_id", "secrets", ["app_id"])
    op.create_table(
        "schedules",
        sa.Column("deployment_id", sa.String(32), nullable=False),
        sa.Column("function_name", sa.String(128), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("anchor_ms", sa.BigInteger(), nullable=False),
        sa.Column("next_run_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_tick_ms", sa.BigInteger()),
        sa.Column("last_call_id", sa.String(32)),
        sa.PrimaryKeyConstraint("deployment_id", "function_name", name="pk_schedules"),
    )
    op.create_index("ix_schedules_next_run_ms", "schedules", ["next_run_ms"])
    for table in ("dicts", "queues"):
        op.create_table(
            table,
            sa.Column("id", sa.String(32), nullable=False),
            sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
            sa.Column("name", sa.String(128), nullable=False),
            sa.Column("created_ms", sa.BigInteger(), nullable=False),
            sa.Column("last_used_ms", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
            sa.UniqueConstraint("account_id", "name", name=f"uq_{table}_account_id_name"),
        )
        op.create_index(f"ix_{table}_last_used_ms", table, ["last_used_ms"])
    op.create_table(
        "dict_entries",
        sa.Column("dict_id", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("dict_id", "key_hash", name="pk_dict_entries"),
    )
    op.create_table(
        "queue_items",
        _id(),
        sa.Column("queue_id", sa.String(32), nullable=False),
        sa.Column("partition", sa.String(64), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_queue_items"),
    )
    op.create_index("ix_queue_items_queue", "queue_items", ["queue_id", "partition", "id"])
    op.create_table(
        "volumes",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("manifest_ref", sa.String(64)),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.Column("metered_until_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_volumes"),
        sa.UniqueConstraint("account_id", "name", name="uq_volumes_account_id_name"),
    )
    op.create_table(
        "volume_versions",
        sa.Column("volume_id", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("manifest_ref", sa.String(64), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("changed", sa.Integer(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("origin", sa.String(40), nullable=False),
        sa.PrimaryKeyConstraint("volume_id", "version", name="pk_volume_versions"),
    )


def downgrade() -> None:
    for table in (
        "volume_versions",
        "volumes",
        "queue_items",
        "dict_entries",
        "queues",
        "dicts",
        "schedules",
        "secrets",
    ):
        op.drop_table(table)
    with op.batch_alter_table("calls") as b:
        b.drop_column("tick_ms")
