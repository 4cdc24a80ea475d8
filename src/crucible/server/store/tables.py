"""The store's tables (SQLAlchemy Core). Alembic migrations under ``migrations/`` create them.

Times are integer milliseconds since the epoch; money is integer micro-dollars. Payloads are
opaque bytes the control plane never decodes.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "accounts",
    "apps",
    "blobs",
    "calls",
    "containers",
    "functions",
    "hosts",
    "metadata",
    "meter_intervals",
    "tokens",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("created_ms", BigInteger, nullable=False),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False, index=True),
    Column("hash", String(64), nullable=False, unique=True),
    Column("scope", String(16), nullable=False),
    Column("name", String(64), nullable=False, default=""),
    Column("created_ms", BigInteger, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
)

# Content-addressed blobs live in the blob store; this table records which account may read
# which blob (a hash alone must not grant access to another tenant's data).
blobs = Table(
    "blobs",
    metadata,
    Column("account_id", String(32), ForeignKey("accounts.id"), primary_key=True),
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

hosts = Table(
    "hosts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("region", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # ready | lost
    Column("inventory", JSON, nullable=False),
    Column("agent_version", String(64), nullable=False, default=""),
    Column("registered_ms", BigInteger, nullable=False),
    Column("last_seen_ms", BigInteger, nullable=False),
    UniqueConstraint("account_id", "name"),
)

apps = Table(
    "apps",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False, index=True),
    Column("name", String(128), nullable=False),
    Column("state", String(16), nullable=False),  # running | stopped
    Column("ephemeral", Boolean, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("stopped_ms", BigInteger),
    # The client of an ephemeral app heartbeats; an app it stopped heartbeating is stopped.
    Column("heartbeat_ms", BigInteger),
)

functions = Table(
    "functions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("app_id", String(32), ForeignKey("apps.id"), nullable=False, index=True),
    Column("name", String(128), nullable=False),
    Column("spec", JSON, nullable=False),  # protocol.apps.FunctionCreate
    Column("created_ms", BigInteger, nullable=False),
    UniqueConstraint("app_id", "name"),
)

containers = Table(
    "containers",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("function_id", String(32), ForeignKey("functions.id"), nullable=False, index=True),
    Column("host_id", String(32), ForeignKey("hosts.id"), nullable=False, index=True),
    # pending (assigned, agent not yet started it) → starting → running (worker connected)
    # → stopping → stopped
    Column("state", String(16), nullable=False),
    Column("cpu", Float, nullable=False),
    Column("memory_mib", Integer, nullable=False),
    Column("gpu_model", String(32)),
    Column("gpu_indices", JSON, nullable=False),
    Column("rate_micros_per_hour", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("started_ms", BigInteger),
    Column("ready_ms", BigInteger),
    Column("last_active_ms", BigInteger, nullable=False),
    Column("stopped_ms", BigInteger),
    Column("metered_until_ms", BigInteger),
    Column("exit_code", Integer),
    Column("exit_reason", String(32)),
    Column("exit_message", Text),
    Index("ix_containers_state", "state"),
)

calls = Table(
    "calls",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("app_id", String(32), nullable=False),
    Column("function_id", String(32), ForeignKey("functions.id"), nullable=False),
    Column("group_id", String(64)),
    Column("idx", Integer, nullable=False, default=0),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("infra_requeues", Integer, nullable=False, default=0),
    Column("input", LargeBinary),
    Column("input_ref", String(64)),
    Column("input_size", BigInteger, nullable=False, default=0),
    Column("output", LargeBinary),
    Column("output_ref", String(64)),
    Column("output_size", BigInteger, nullable=False, default=0),
    Column("error", JSON),
    Column("idempotency_key", String(128)),
    Column("container_id", String(32)),
    Column("created_ms", BigInteger, nullable=False),
    Column("started_ms", BigInteger),
    Column("finished_ms", BigInteger),
    Column("next_attempt_ms", BigInteger, nullable=False, default=0),
    Column("deadline_ms", BigInteger),
    Column("delivered", Boolean, nullable=False, default=False),
    Column("exec_ms", BigInteger),
    Column("cost_micros", BigInteger),
    # Claiming scans queued calls of a function in id (= creation) order.
    Index("ix_calls_function_state", "function_id", "state", "id"),
    Index("ix_calls_group", "group_id", "delivered", "state"),
    Index("ix_calls_account_created", "account_id", "created_ms"),
    Index("ix_calls_container", "container_id", "state"),
    Index("ix_calls_state_deadline", "state", "deadline_ms"),
    Index("ix_calls_account_function_exec", "account_id", "function_id", "exec_ms"),
    Index(
        "uq_calls_account_idempotency",
        "account_id",
        "idempotency_key",
        unique=True,
    ),
)

# One row per metered interval of a container: (container_id, start_ms) is unique, so a
# restarted server that meters the same interval again inserts nothing (idempotent metering).
meter_intervals = Table(
    "meter_intervals",
    metadata,
    Column("container_id", String(32), ForeignKey("containers.id"), primary_key=True),
    Column("start_ms", BigInteger, primary_key=True),
    Column("end_ms", BigInteger, nullable=False),
    Column("account_id", String(32), nullable=False),
    Column("app_id", String(32), nullable=False),
    Column("function_id", String(32), nullable=False, index=True),
    Column("cost_micros", BigInteger, nullable=False),
    Index("ix_meter_intervals_account", "account_id", "app_id"),
)
