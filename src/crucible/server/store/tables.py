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
    text,
)

__all__ = [
    "access_requests",
    "accounts",
    "apps",
    "audit_log",
    "blobs",
    "call_attempts",
    "call_inbox",
    "call_items",
    "calls",
    "change_counters",
    "clusters",
    "console_sessions",
    "containers",
    "deployments",
    "dict_entries",
    "dicts",
    "fine_tunes",
    "functions",
    "host_offers",
    "hosts",
    "leadership",
    "ledger_entries",
    "ledger_postings",
    "log_lines",
    "metadata",
    "meter_intervals",
    "model_adapters",
    "model_usage",
    "models",
    "pods",
    "queue_items",
    "queues",
    "replicas",
    "reservations",
    "schedules",
    "secrets",
    "token_holds",
    "tokens",
    "volume_versions",
    "volumes",
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
    # Spend cap per UTC day in micro-dollars (None: no cap); see core.ledger.
    Column("daily_cap_micros", BigInteger),
    # Approved by the operator to run other accounts' work on its hosts (fully isolated ones);
    # the hosts of any other account run their owner's code only.
    Column("provider", Boolean, nullable=False, default=False),
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
    # The host's profile in the market (declared by its agent, changed by its owner).
    Column("energy_source", String(64), nullable=False, default="unknown"),
    Column("carbon_g_per_kwh", Integer),
    Column("draining", Boolean, nullable=False, default=False),
    # Leases (GPU containers) ended on this host, and those ended by a host fault (it was
    # lost): the published reliability score is derived from them.
    Column("leases_ended", Integer, nullable=False, default=0),
    Column("leases_faulted", Integer, nullable=False, default=0),
    # Carbon intensity in force now, from the operator's grid source for the region (None:
    # the declared figure applies), and why a grid source was not used; power readings the
    # agent dropped (negative or absurd).
    Column("carbon_now_g_per_kwh", Integer),
    Column("carbon_note", String(300)),
    Column("energy_readings_dropped", BigInteger, nullable=False, default=0),
    # Registrations of this host so far: each agent process numbers its syncs from 1, and
    # every replica tells a new process's syncs from the last one's by this.
    Column("agent_session", BigInteger, nullable=False, default=0, server_default="0"),
    # What the host's agent measured it enforces (protocol IsolationReport; NULL: an older
    # agent, treated as runtime "process"): strangers' code runs only where it is full.
    Column("isolation", JSON),
    Column("isolated", Boolean, nullable=False, default=False),  # the report's full()
    # The server's verdict on the agent's self-test figures against the GPU catalog, and
    # the figures with the reason (protocol HostVerification).
    Column("verified", Boolean, nullable=False, default=False),
    Column("verification", JSON),
    # Where the host's cluster members reach each other (the agent's own address towards the
    # control plane, or what its operator set); None: an older agent.
    Column("address", String(64)),
    # Bumped by the store (a trigger, migration 0028) at every write of a column placement
    # reads (not last_seen_ms): the scheduler's view re-reads only hosts changed since it last
    # read (server/scheduler/fleet_view.py).
    Column("change_seq", BigInteger, nullable=False, default=0, server_default="0"),
    UniqueConstraint("account_id", "name"),
    Index("ix_hosts_change_seq", "change_seq"),
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
    # A version of a deployment (None: an ephemeral or standalone app). States of a deployed
    # version: deploying (functions being registered) -> running (the current version) ->
    # retiring (superseded: serves the calls it already has) -> stopped.
    Column("deployment_id", String(32), index=True),
    Column("version", Integer),
    # Bumped by the store at every write of state (migration 0028): the scheduler's view.
    Column("change_seq", BigInteger, nullable=False, default=0, server_default="0"),
    Index("ix_apps_change_seq", "change_seq"),
    # The scheduler's chores each tick: versions retiring, ephemeral apps gone silent.
    Index("ix_apps_state_ephemeral_heartbeat", "state", "ephemeral", "heartbeat_ms"),
)

functions = Table(
    "functions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("app_id", String(32), ForeignKey("apps.id"), nullable=False, index=True),
    Column("name", String(128), nullable=False),
    Column("spec", JSON, nullable=False),  # protocol.apps.FunctionCreate
    # Bumped by every write of spec: the parsed spec is cached by (id, spec_rev)
    # (services/function_specs.py).
    Column("spec_rev", Integer, nullable=False, default=1, server_default="1"),
    # Keeps containers without work (min_containers or buffer_containers > 0): the scheduler
    # looks at such functions of running apps even when they have no calls.
    Column("warm", Boolean, nullable=False, default=False),
    Column("created_ms", BigInteger, nullable=False),
    # Bumped by the store at every write of app_id, account_id, spec_rev or warm (migration 0028):
    # the scheduler's view keeps the rows of the functions it plans.
    Column("change_seq", BigInteger, nullable=False, default=0, server_default="0"),
    UniqueConstraint("app_id", "name"),
    Index("ix_functions_change_seq", "change_seq"),
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
    # When its host first reported it pulling its OCI image (a pending container; docs/pods.md).
    Column("pulling_ms", BigInteger),
    Column("ready_ms", BigInteger),
    Column("last_active_ms", BigInteger, nullable=False),
    Column("stopped_ms", BigInteger),
    Column("metered_until_ms", BigInteger),
    Column("exit_code", Integer),
    Column("exit_reason", String(32)),
    Column("exit_message", Text),
    # The container's lease in the market (its id is the container's id). ``unit_price`` is
    # per device-hour (GPU) or per core-hour (CPU-only), fixed when it was granted.
    Column("tier", String(16), nullable=False, default="on_demand"),
    Column("unit_price_micros", BigInteger, nullable=False, default=0),
    Column("reservation_id", String(32)),
    # Devices still held by a preempted lease in its grace period: start no earlier.
    Column("start_after_ms", BigInteger, nullable=False, default=0),
    # Metering ends here when the lease ended before the container stopped (preemption,
    # out of credit): each device-millisecond is charged to at most one renter.
    Column("lease_end_ms", BigInteger),
    Column("end_cause", String(32)),  # preempted | out_of_credit | host_lost | ...
    Column("stop_grace_ms", BigInteger),  # SIGTERM→SIGKILL for this stop (None: default)
    # Asked to stop: metering ends here at the latest, whatever its agent reports after
    # (services/containers.request_stop: the stop's grace and an allowance past the ask).
    Column("stop_by_ms", BigInteger),
    Column("metered_cost_micros", BigInteger, nullable=False, default=0),
    # The platform fee in force when the lease was granted (parts per million).
    Column("fee_ppm", Integer, nullable=False, default=0),
    # Energy the agent last reported for the container since it started (milliwatt-hours;
    # None: not reported, metering estimates it), and how much of it metering has assigned to
    # intervals so far.
    Column("energy_mwh", BigInteger),
    Column("energy_estimated", Boolean, nullable=False, default=False),
    Column("metered_energy_mwh", BigInteger, nullable=False, default=0),
    # The agent sync that first reported it started: agent session * 2**32 + the sync's seq
    # (services/hosts.sync_mark). A sync that does not report it concludes it is gone only
    # if it is later than this one (two syncs of one agent may be applied out of order).
    Column("seen_in_sync", BigInteger),
    # Bumped by the store (a trigger, migration 0028) at every write of a column the
    # scheduler's tick reads: its view re-reads only containers changed since it last read.
    Column("change_seq", BigInteger, nullable=False, default=0, server_default="0"),
    Index("ix_containers_state", "state"),
    Index("ix_containers_change_seq", "change_seq"),
)

# The change counters behind the change_seq columns on SQLite (one row per table;
# PostgreSQL uses sequences of the same names, see migration 0028).
change_counters = Table(
    "change_counters",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("n", BigInteger, nullable=False),
)

# Named, versioned apps that outlive their client (`crucible deploy`). Calls by name go to
# ``current_app_id``; a redeploy or rollback moves it.
deployments = Table(
    "deployments",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("state", String(16), nullable=False),  # running | stopped
    Column("current_app_id", String(32)),
    Column("version", Integer, nullable=False),  # the current version
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    UniqueConstraint("account_id", "name"),
)

# What a generator call yielded, in order (opaque payloads: inline bytes or a blob ref).
call_items = Table(
    "call_items",
    metadata,
    Column("call_id", String(32), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("data", LargeBinary),
    Column("ref", String(64)),
    Column("size", BigInteger, nullable=False),
    # Blob collection (services/retention.py) looks blobs up by reference.
    Index(
        "ix_call_items_ref",
        "ref",
        sqlite_where=text("ref IS NOT NULL"),
        postgresql_where=text("ref IS NOT NULL"),
    ),
)

# What a WebSocket's client sent, in order, for the container serving it to read.
call_inbox = Table(
    "call_inbox",
    metadata,
    Column("call_id", String(32), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("message", Text, nullable=False),  # JSON: {"type", "text"|"bytes"(base64)|"code"}
)

# Attempts of a call that ended while the call went on (requeued): the call's row holds its
# latest attempt, these the earlier ones (services/attempts.py; shown in its timeline).
call_attempts = Table(
    "call_attempts",
    metadata,
    Column("call_id", String(32), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("container_id", String(32)),
    Column("started_ms", BigInteger),
    Column("ended_ms", BigInteger, nullable=False),
    Column("outcome", String(24), nullable=False),
    Column("error", JSON),
    Column("exec_ms", BigInteger),
    Column("cost_micros", BigInteger, nullable=False),
)

# What functions print (stdout and stderr), line by line, as their workers send it.
log_lines = Table(
    "log_lines",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("account_id", String(32), nullable=False),
    Column("app_id", String(32), nullable=False),
    Column("function_id", String(32), nullable=False),
    Column("container_id", String(32), nullable=False),
    Column("call_id", String(32)),
    Column("ts_ms", BigInteger, nullable=False),
    Column("stream", String(8), nullable=False),
    Column("line", Text, nullable=False),
    Index("ix_log_lines_app", "app_id", "id"),
    Index("ix_log_lines_call", "call_id", "id"),
)

# A host's asking terms per device type (a GPU model, or "cpu"), micro-dollars per unit-hour.
host_offers = Table(
    "host_offers",
    metadata,
    Column("host_id", String(32), ForeignKey("hosts.id"), primary_key=True),
    Column("device_type", String(32), primary_key=True),
    Column("on_demand", BigInteger, nullable=False),
    Column("interruptible_min", BigInteger, nullable=False),
    Column("reserved", BigInteger, nullable=False),
    Column("memory_on_demand", BigInteger, nullable=False, default=0),
    Column("memory_interruptible", BigInteger, nullable=False, default=0),
    Column("memory_reserved", BigInteger, nullable=False, default=0),
    Column("updated_ms", BigInteger, nullable=False),
)

# Reserved blocks: ``blocks`` is a list of {host_id, devices, price} (one per node).
reservations = Table(
    "reservations",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False, index=True),
    Column("model", String(32), nullable=False),
    Column("count", Integer, nullable=False),
    Column("blocks", JSON, nullable=False),
    Column("start_ms", BigInteger, nullable=False),
    Column("end_ms", BigInteger, nullable=False, index=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("metered_until_ms", BigInteger),
    Column("metered_cost_micros", BigInteger, nullable=False, default=0),
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
    Column("preemptions", Integer, nullable=False, default=0),
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
    # The schedule tick that created this call (None: submitted by a client).
    Column("tick_ms", BigInteger),
    # The container whose function made this call (None: a builder's, a schedule's or a web
    # request's): a container token reads and cancels only the calls it made.
    Column("caller_container_id", String(32)),
    # Claiming scans queued calls of a function in id (= creation) order.
    Index("ix_calls_function_state", "function_id", "state", "id"),
    Index("ix_calls_group", "group_id", "delivered", "state"),
    Index("ix_calls_account_created", "account_id", "created_ms"),
    Index("ix_calls_container", "container_id", "state"),
    Index("ix_calls_state_deadline", "state", "deadline_ms"),
    Index("ix_calls_account_function_exec", "account_id", "function_id", "exec_ms"),
    # Retention finds finished calls by age, and blob collection finds blobs by reference.
    Index("ix_calls_finished", "finished_ms"),
    Index(
        "ix_calls_input_ref",
        "input_ref",
        sqlite_where=text("input_ref IS NOT NULL"),
        postgresql_where=text("input_ref IS NOT NULL"),
    ),
    Index(
        "ix_calls_output_ref",
        "output_ref",
        sqlite_where=text("output_ref IS NOT NULL"),
        postgresql_where=text("output_ref IS NOT NULL"),
    ),
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
    # Energy (milliwatt-hours) and emissions (milligrams of CO2) of the interval, at the
    # host's carbon intensity when it was metered.
    Column("energy_mwh", BigInteger, nullable=False, default=0),
    Column("carbon_mg", BigInteger, nullable=False, default=0),
    Column("carbon_g_per_kwh", Integer),
    Column("energy_estimated", Boolean, nullable=False, default=False),
    Index("ix_meter_intervals_account", "account_id", "app_id"),
    Index("ix_meter_intervals_end", "end_ms"),  # retention finds old intervals
)

# The double-entry ledger (see core.ledger): entries are immutable and keyed for
# idempotency; every balance is the sum of an account's postings. ``renter``, ``host_id``,
# ``app_id``, ``function_id`` and ``meter`` say what an entry concerns, for statements.
ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("key", String(160), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("memo", Text, nullable=False, default=""),
    Column("renter", String(32), index=True),
    Column("host_id", String(32), index=True),
    Column("app_id", String(32)),
    Column("function_id", String(32)),
    Column("meter", String(40), index=True),
    Column("start_ms", BigInteger),
    Column("end_ms", BigInteger),
    Column("cost_micros", BigInteger),
    Column("reverses", String(160)),
    # A charge's energy and emissions, copied from its metered interval when retention
    # pruned the interval (None while the interval is kept: statements read it there).
    Column("energy_mwh", BigInteger),
    Column("carbon_mg", BigInteger),
    # A charge's device type (a GPU model or "cpu") and tier, copied from its container
    # when retention deleted the container with its stopped app (None while the container
    # is kept: host earnings read them there).
    Column("device_type", String(32)),
    Column("tier", String(16)),
)

ledger_postings = Table(
    "ledger_postings",
    metadata,
    Column("entry_key", String(160), ForeignKey("ledger_entries.key"), primary_key=True),
    Column("account", String(48), primary_key=True),  # renter:<id> | host:<id> | platform:fees
    Column("amount_micros", BigInteger, nullable=False),
    Index("ix_ledger_postings_account", "account", "amount_micros"),
)

# Named key/values of an account, encrypted at rest (server.secretbox): ``ciphertext`` holds
# the JSON of all values, sealed with the key ``key_id`` and the secret's account and name as
# associated data. ``keys`` (names only) is kept in clear for listings. A secret with an
# ``app_id`` was made by ``Secret.from_dict`` for that app and goes when the app stops.
secrets = Table(
    "secrets",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("app_id", String(32), index=True),
    Column("key_id", String(16), nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("keys", JSON, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    UniqueConstraint("account_id", "name"),
)

# One row per scheduled function of a running deployment, keyed by the deployment and the
# function's name so that a redeploy keeps the schedule's phase. A tick is claimed by moving
# ``next_run_ms`` forward in the transaction that creates its call (exactly one call a tick).
schedules = Table(
    "schedules",
    metadata,
    Column("deployment_id", String(32), primary_key=True),
    Column("function_name", String(128), primary_key=True),
    Column("account_id", String(32), nullable=False),
    Column("spec", JSON, nullable=False),  # protocol.schedules.ScheduleSpec
    Column("anchor_ms", BigInteger, nullable=False),
    Column("next_run_ms", BigInteger, nullable=False, index=True),
    Column("last_tick_ms", BigInteger),
    Column("last_call_id", String(32)),
)

# crucible.Dict: opaque keys (canonical bytes made by the SDK, found by their sha256) and
# opaque values (pickles the control plane never decodes).
dicts = Table(
    "dicts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("last_used_ms", BigInteger, nullable=False, index=True),
    UniqueConstraint("account_id", "name"),
)

dict_entries = Table(
    "dict_entries",
    metadata,
    Column("dict_id", String(32), primary_key=True),
    Column("key_hash", String(64), primary_key=True),
    Column("key", LargeBinary, nullable=False),
    Column("value", LargeBinary, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

# crucible.Queue: FIFO per partition ("" is the default partition).
queues = Table(
    "queues",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("last_used_ms", BigInteger, nullable=False, index=True),
    UniqueConstraint("account_id", "name"),
)

queue_items = Table(
    "queue_items",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("queue_id", String(32), nullable=False),
    Column("partition", String(64), nullable=False),
    Column("value", LargeBinary, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Index("ix_queue_items_queue", "queue_id", "partition", "id"),
)

# Volumes: named, versioned file trees. A version's manifest (protocol.volumes.Manifest, JSON)
# is a blob; its files' chunks are blobs too, granted to the account. ``metered_until_ms``:
# storage is charged per GiB-month up to there.
volumes = Table(
    "volumes",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("manifest_ref", String(64)),
    Column("files", Integer, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("metered_until_ms", BigInteger, nullable=False),
    UniqueConstraint("account_id", "name"),
)

volume_versions = Table(
    "volume_versions",
    metadata,
    Column("volume_id", String(32), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("manifest_ref", String(64), nullable=False),
    Column("files", Integer, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("changed", Integer, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("origin", String(40), nullable=False),
)

# Privileged actions (tokens, accounts, credits, prices, drains, verification results), in
# the order they were taken; read by admins only (GET /v1/audit, `crucible audit`).
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("ts_ms", BigInteger, nullable=False),
    Column("actor_account_id", String(32)),  # NULL: the server itself (e.g. a verification)
    Column("actor_token_id", String(32)),
    Column("action", String(64), nullable=False),  # e.g. token.create, credits.grant
    Column("target", String(128), nullable=False),  # the id the action was taken on
    Column("account_id", String(32)),  # the account affected, when there is one
    Column("detail", JSON, nullable=False),
    Index("ix_audit_log_action", "action", "id"),
    Index("ix_audit_log_ts", "ts_ms"),
)

# Web console sign-ins (server/console/): the cookie carries a random secret, stored here
# hashed. A session lives while its API token is not revoked and until it expires or its
# owner signs out (the row is deleted).
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("token_id", String(32), ForeignKey("tokens.id"), nullable=False, index=True),
    Column("csrf", String(64), nullable=False),  # the token every form of the session carries
    Column("created_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False, index=True),
)


# Model deployments (docs/inference.md): a deployment whose web function serves the OpenAI
# protocol. Prices are micro-dollars per million tokens (None: billed by container time only).
models = Table(
    "models",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("deployment_id", String(32), ForeignKey("deployments.id"), nullable=False),
    Column("function", String(128), nullable=False),  # the web function that serves it
    Column("engine", String(32), nullable=False),
    Column("weights", Text, nullable=False),  # where the weights came from, for people
    Column("public", Boolean, nullable=False),
    Column("price_input_micros", BigInteger),
    Column("price_output_micros", BigInteger),
    Column("charged_micros", BigInteger, nullable=False),  # token charges so far (fee rounding)
    # The engine's window in tokens: bounds what one request may be charged (core/token_bounds).
    Column("context_length", Integer, nullable=False, server_default="2048"),
    # The highest LoRA rank its engine serves (`crucible model deploy --max-lora-rank`).
    Column("max_lora_rank", Integer, nullable=False, server_default="64"),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    UniqueConstraint("account_id", "name"),
)

# LoRA adapters served on top of a model; ``path`` is where containers read it.
model_adapters = Table(
    "model_adapters",
    metadata,
    Column("model_id", String(32), ForeignKey("models.id"), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("path", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

# Fine-tuning jobs: the call that trains a LoRA adapter for a model; the adapter is
# registered (model_adapters) once the call succeeds.
fine_tunes = Table(
    "fine_tunes",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("model_id", String(32), ForeignKey("models.id"), nullable=False),
    Column("adapter", String(128), nullable=False),
    Column("call_id", String(32), nullable=False),
    Column("app_id", String(32), nullable=False),
    Column("params", JSON, nullable=False),  # method, rank, epochs, lr, examples, data
    Column("registered", Boolean, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Index("ix_fine_tunes_account", "account_id", "created_ms"),
    Index("ix_fine_tunes_model_adapter", "model_id", "adapter"),
)

# Tokens used per (model, caller, adapter, UTC day); ``value_units`` is the exact running
# value in micro-dollars x 10^-6 (tokens x price per million), charged rounded down.
# What metered model requests in flight may still cost their callers (server/billing/holds):
# a hold is placed before the request runs and removed when its charge is posted.
token_holds = Table(
    "token_holds",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("account_id", String(32), nullable=False, index=True),
    Column("amount_micros", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
)

model_usage = Table(
    "model_usage",
    metadata,
    Column("model_id", String(32), ForeignKey("models.id"), primary_key=True),
    Column("account_id", String(32), primary_key=True),
    Column("adapter", String(128), primary_key=True),  # "" for the base model
    Column("day", Integer, primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("value_units", BigInteger, nullable=False),
    Column("cost_micros", BigInteger, nullable=False),
)

# Pods (docs/pods.md): a lease held until stopped. Each pod has an app and a function of its
# own (hidden from app lists) so that its containers are placed, metered and charged like any
# function's; ``state`` is the pod's wish and last settled outcome (services/pods.py derives
# the state shown from its current container). ``run_started_ms``: the latest `start`; a
# container that ended before it belongs to a previous run.
pods = Table(
    "pods",
    metadata,
    Column("id", String(32), primary_key=True),
    # Read by account through ix_pods_account_name and ix_pods_account_state_name.
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("spec", JSON, nullable=False),  # protocol.pods.PodSpec
    # active (wants to run) | stopping | stopped | preempted | failed | deleted
    Column("state", String(16), nullable=False),
    Column("reason", Text),
    Column("app_id", String(32), ForeignKey("apps.id"), nullable=False),
    Column("function_id", String(32), ForeignKey("functions.id"), nullable=False, index=True),
    Column("host_id", String(32)),  # where its disk is (the host of its last container)
    Column("created_ms", BigInteger, nullable=False),
    Column("run_started_ms", BigInteger, nullable=False),
    Column("stopped_ms", BigInteger),
    # A member of a cluster (None: a pod of its own): its rank, and what it was told about
    # the cluster when the gang was placed (RANK, WORLD_SIZE, MASTER_ADDR, ...).
    Column("cluster_id", String(32), index=True),
    Column("rank", Integer),
    Column("cluster_env", JSON),
    # Its place on the cluster's private network (protocol ClusterNetPlan); None: the
    # members use their hosts' network.
    Column("cluster_net", JSON),
    Index("ix_pods_account_name", "account_id", "name"),
    Index("ix_pods_state", "state"),  # the scheduler settles active and stopping pods
    # A submission counts the account's pods and those of its name from the index alone
    # (migration 0030), not from up to MAX_PODS rows.
    Index("ix_pods_account_state_name", "account_id", "state", "name"),
)

# Clusters (docs/pods.md): ``nodes`` pods placed all at once or not at all, stopped as one.
# ``state``: active (wants to run) | stopping | stopped | deleted; ``reason``: why it ended.
clusters = Table(
    "clusters",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False, index=True),
    Column("name", String(64), nullable=False),
    Column("nodes", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", Text),
    Column("created_ms", BigInteger, nullable=False),
    Column("run_started_ms", BigInteger, nullable=False),
    Column("stopped_ms", BigInteger),
    Index("ix_clusters_state", "state"),  # each tick reads the active ones
)

# Accounts' SSH public keys: the SSH server of every container of the account accepts them.
ssh_keys = Table(
    "ssh_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False, index=True),
    Column("name", String(64), nullable=False),
    Column("key_type", String(64), nullable=False),
    Column("fingerprint", String(64), nullable=False),  # SHA256:... (ssh-keygen -l)
    Column("public_key", Text, nullable=False),  # "TYPE BASE64" (the comment is the name)
    Column("created_ms", BigInteger, nullable=False),
    UniqueConstraint("account_id", "fingerprint"),
)

# Idempotency keys of the routes that make something anew (services/request_keys.py): the
# first answer of each key, kept a day, written in the transaction that did the work.
request_keys = Table(
    "request_keys",
    metadata,
    Column("account_id", String(32), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("route", String(300), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("response", LargeBinary, nullable=False),
    Column("created_ms", BigInteger, nullable=False, index=True),
)

# The scheduler's leader among replicas (server/leadership.py): one row per role. ``epoch``
# grows by one at every change of holder; every write of the leader checks it (the fence),
# so a deposed leader cannot commit. ``expires_ms``: the holder's lease, renewed while alive.
leadership = Table(
    "leadership",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("epoch", BigInteger, nullable=False),
    Column("holder", String(64), nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    # The holder's CRUCIBLE_ADVERTISE_URL ('' when none): where other replicas forward what
    # only the leader may decide (reservations).
    Column("url", Text, nullable=False, default="", server_default=""),
)

# Access sessions (exec, SSH, ports) waiting to be handed to their host's agent, when replicas
# advertise their own URLs (CRUCIBLE_ADVERTISE_URL): the replica holding the client writes
# the request; whichever replica the agent's sync reaches takes it (deleting it) and hands it
# over; the agent dials ``dial_url`` back. Rows live seconds.
access_requests = Table(
    "access_requests",
    metadata,
    Column("session_id", String(64), primary_key=True),
    Column("host_id", String(32), nullable=False, index=True),
    Column("request", Text, nullable=False),  # AccessRequest as JSON
    Column("created_ms", BigInteger, nullable=False),
)

# The server processes on this store, each renewing its row with its lease claims
# (server/leadership.py): a replica that sees no other alive skips publishing wake-ups.
replicas = Table(
    "replicas",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("url", Text, nullable=False),  # its CRUCIBLE_ADVERTISE_URL ('' when none)
    Column("seen_ms", BigInteger, nullable=False),
    # What every replica must share, fingerprinted (leadership.settings_check); '' unknown.
    Column("settings_check", String(1000), nullable=False, default="", server_default=""),
)
