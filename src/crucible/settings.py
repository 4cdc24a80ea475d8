"""The one settings table.

Every option Crucible reads has a default, an environment variable and a line of
documentation here, and nowhere else. Nothing is read at import time: call
:func:`load_settings` (the server, agent and CLI do so at start-up) and pass the result down.
``crucible settings`` prints this table; ``docs/operators.md`` is generated from it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import Field, dataclass, field
from pathlib import Path
from typing import Any

from crucible.errors import SettingError

__all__ = ["SETTINGS_TABLE", "Settings", "load_settings", "shown_value", "without_password"]


def _opt(default: Any, env: str, doc: str, *, secret: bool = False) -> Any:
    """One setting: its default, environment variable and meaning. ``secret``: its value is
    never printed (`crucible settings` says only whether it is set)."""
    return field(default=default, metadata={"env": env, "doc": doc, "secret": secret})


def without_password(url: str) -> str:
    """A URL fit to print: a password in it, as ``user:password@`` or as a query parameter
    (``?password=`` and the like, which libpq reads too), as ``***``."""
    url = re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", url)
    return re.sub(r"([?&](?:password|passwd|pass|secret|token)=)[^&#]*", r"\1***", url, flags=re.I)


def shown_value(f: Field[Any], value: Any) -> Any:
    """A setting's value as `crucible settings` prints it: a secret's only as whether it
    is set, a store URL without its password."""
    if f.metadata.get("secret"):
        return "(set)" if value else ""
    if isinstance(value, str) and "://" in value:  # any URL: the store's, a server's, sources
        return without_password(value)
    return value


@dataclass(frozen=True)
class Settings:
    # -- where state lives -------------------------------------------------------------------
    home: str = _opt(
        "~/.crucible",
        "CRUCIBLE_HOME",
        "Data directory of an embedded exchange and of the client config (empty: the default).",
    )
    database_url: str = _opt(
        "",
        "CRUCIBLE_DATABASE_URL",
        "SQLAlchemy URL of the store. Empty: SQLite at $CRUCIBLE_HOME/crucible.db. "
        "PostgreSQL: postgresql+psycopg://user:pass@host/db.",
    )
    blob_dir: str = _opt(
        "", "CRUCIBLE_BLOB_DIR", "Directory of the blob store. Empty: $CRUCIBLE_HOME/blobs."
    )
    blob_store: str = _opt(
        "",
        "CRUCIBLE_BLOB_STORE",
        "Where blobs live: empty for the local directory (CRUCIBLE_BLOB_DIR), or "
        "s3://BUCKET[/PREFIX] for an S3-compatible object store (needs boto3: "
        "pip install 'crucible[s3]'); every replica must use the same.",
    )
    s3_endpoint_url: str = _opt(
        "",
        "CRUCIBLE_S3_ENDPOINT_URL",
        "Endpoint of an S3-compatible service (MinIO, Ceph, R2...). Empty: AWS S3.",
    )
    s3_region: str = _opt("", "CRUCIBLE_S3_REGION", "Region of the S3 bucket (empty: boto3's).")
    s3_access_key_id: str = _opt(
        "",
        "CRUCIBLE_S3_ACCESS_KEY_ID",
        "S3 access key. Empty: boto3's usual chain (AWS_* environment, instance role).",
    )
    s3_secret_access_key: str = _opt(
        "",
        "CRUCIBLE_S3_SECRET_ACCESS_KEY",
        "S3 secret key (with CRUCIBLE_S3_ACCESS_KEY_ID).",
        secret=True,
    )
    secret: str = _opt(
        "",
        "CRUCIBLE_SECRET",
        "Server secret that signs container tokens (at least 16 characters); every replica "
        "needs the same one. Empty: generated once into $CRUCIBLE_HOME/secret.",
        secret=True,
    )
    secrets_keys: str = _opt(
        "",
        "CRUCIBLE_SECRETS_KEYS",
        "Keys that encrypt secrets at rest: base64 of 32 random bytes each, comma-separated; "
        "the first encrypts, every one decrypts (rotation: see docs/operators.md). Every "
        "replica needs the same. Empty: generated once into $CRUCIBLE_HOME/secrets.key.",
        secret=True,
    )
    # -- server ------------------------------------------------------------------------------
    bind_host: str = _opt("127.0.0.1", "CRUCIBLE_BIND_HOST", "Address the server listens on.")
    port: int = _opt(8745, "CRUCIBLE_PORT", "Port the server listens on.")
    trusted_proxies: str = _opt(
        "",
        "CRUCIBLE_TRUSTED_PROXIES",
        "Comma-separated addresses of the reverse proxies (load balancers) in front of the "
        "server, whose X-Forwarded-For and X-Forwarded-Proto name the client; empty: no "
        "proxy is trusted, and the connection's peer is the client (what per-client rate "
        "limits and web endpoints' X-Forwarded-For see).",
    )
    ports_domain: str = _opt(
        "",
        "CRUCIBLE_PORTS_DOMAIN",
        "Domain for user content, each on its own origin: a pod's published HTTP port at "
        "http(s)://{pod_id}-{port}.{domain}/ and a web endpoint at http(s)://{label}.{domain}/ "
        "(the URL `crucible deploy` prints; browsers at /web/... are redirected there). Needs "
        "wildcard DNS, and a wildcard TLS certificate, for *.{domain}; ports.localhost works "
        "on a laptop. Empty: both are served under the exchange's own origin, where their "
        "pages can read the console of whoever opens them (docs/access.md).",
    )
    max_request_bytes: int = _opt(
        16 * 1024 * 1024,
        "CRUCIBLE_MAX_REQUEST_BYTES",
        "Largest JSON request body accepted; larger ones get 413 payload_too_large.",
    )
    openai_max_request_bytes: int = _opt(
        4 * 1024 * 1024,
        "CRUCIBLE_OPENAI_MAX_REQUEST_BYTES",
        "Largest request body of the OpenAI API (/openai/v1): a bigger prompt is refused "
        "with 400 request_too_large before any engine work. 4 MiB holds a full 128k-token "
        "context as text; each model's context length bounds its prompts in tokens.",
    )
    max_blob_bytes: int = _opt(
        2 * 1024**3, "CRUCIBLE_MAX_BLOB_BYTES", "Largest blob (code bundle, big argument) accepted."
    )
    inline_payload_max_bytes: int = _opt(
        2 * 1024 * 1024,
        "CRUCIBLE_INLINE_PAYLOAD_MAX_BYTES",
        "Arguments and results larger than this travel through the blob store by reference.",
    )
    scheduler_interval_s: float = _opt(
        0.25,
        "CRUCIBLE_SCHEDULER_INTERVAL_S",
        "Period of the scheduler loop (it also runs at once when new work arrives).",
    )
    leader_lease_s: float = _opt(
        5.0,
        "CRUCIBLE_LEADER_LEASE_S",
        "Replicas on one PostgreSQL elect one scheduler leader through a lease row: a leader "
        "that has not renewed for this long is replaced (its epoch is fenced off, so it can "
        "no longer commit scheduler writes). Keep it several times CRUCIBLE_LEADER_RENEW_S "
        "(at least twice: checked at start), "
        "above the replicas' clock skew and above the longest scheduler tick (a tick holds "
        "the lease row, so the leader renews after it).",
    )
    leader_renew_s: float = _opt(
        1.0,
        "CRUCIBLE_LEADER_RENEW_S",
        "How often each replica renews (leader) or tries to take (follower) the scheduler "
        "lease; a dead leader is replaced within about leader_lease_s + leader_renew_s.",
    )
    advertise_url: str = _opt(
        "",
        "CRUCIBLE_ADVERTISE_URL",
        "This replica's own URL as agents reach it directly (not the balancer's), e.g. "
        "http://10.0.0.10:8745. Set on every replica: an exec, SSH or port session is then "
        "handed to the host's agent through the store, whichever replica its syncs reach, "
        "and the agent dials this URL back; replicas that do not lead forward reservations "
        "to the leader's. Empty: sessions are handed over in memory (one replica, or the "
        "agents' syncs routed to the replica of the session) and each replica decides "
        "reservations on its own copy of the market.",
    )
    host_timeout_s: float = _opt(
        15.0,
        "CRUCIBLE_HOST_TIMEOUT_S",
        "A host silent this long is lost: its containers end and their calls are requeued. "
        "Its containers are billed up to its last sync, not for the silence.",
    )
    unschedulable_grace_s: float = _opt(
        10.0,
        "CRUCIBLE_UNSCHEDULABLE_GRACE_S",
        "How long a call whose resources no live host can ever satisfy waits for such a host "
        "to register before it fails with resources_unsatisfiable.",
    )
    container_start_timeout_s: float = _opt(
        120.0,
        "CRUCIBLE_CONTAINER_START_TIMEOUT_S",
        "A container not ready this long after it was assigned is ended and replaced.",
    )
    timeout_grace_s: float = _opt(
        2.0,
        "CRUCIBLE_TIMEOUT_GRACE_S",
        "Past a call's timeout the worker raises inside the function; if the container has not "
        "answered after this grace, the server ends the call and stops the container.",
    )
    scaledown_window_s: float = _opt(
        60.0,
        "CRUCIBLE_SCALEDOWN_WINDOW_S",
        "Default time an idle container is kept before it is stopped (scale to zero).",
    )
    max_containers: int = _opt(
        16, "CRUCIBLE_MAX_CONTAINERS", "Default cap on the containers of one function."
    )
    max_class_pools: int = _opt(
        64,
        "CRUCIBLE_MAX_CLASS_POOLS",
        "Most parameter sets a deployed @app.cls() class serves (each is a pool of its "
        "own): past it, a new one is refused until the class is deployed again.",
    )
    app_heartbeat_timeout_s: float = _opt(
        60.0,
        "CRUCIBLE_APP_HEARTBEAT_TIMEOUT_S",
        "An ephemeral app (`crucible run`, `app.run()`) whose client has not been heard from "
        "for this long is stopped, with its queued calls and containers.",
    )
    max_infra_requeues: int = _opt(
        5,
        "CRUCIBLE_MAX_INFRA_REQUEUES",
        "Requeues after host loss, which do not count against a function's retries, before a "
        "call fails anyway.",
    )
    log_lines_per_container: int = _opt(
        100_000,
        "CRUCIBLE_LOG_LINES_PER_CONTAINER",
        "Most log lines stored per container (what a function prints); past it, lines are "
        "dropped and one line says so, so a chatty or hostile function cannot fill the store.",
    )
    console_session_hours: float = _opt(
        12.0,
        "CRUCIBLE_CONSOLE_SESSION_HOURS",
        "How long a web console sign-in lasts. Signing out, or revoking the token that signed "
        "in, ends a session sooner.",
    )
    crash_loop_limit: int = _opt(
        5,
        "CRUCIBLE_CRASH_LOOP_LIMIT",
        "A function whose containers exit this many times in a row before becoming ready is "
        "crash-looping: its queued calls fail with the last container's error (between "
        "crashes, new containers wait 1 s, 2 s, 4 s ... up to 60 s).",
    )
    carbon_sources: str = _opt(
        "",
        "CRUCIBLE_CARBON_SOURCES",
        "Grid carbon intensity per region, used instead of hosts' declared figures: "
        "`region=source` pairs separated by `;`, a source being a CSV file of "
        '`time,g_per_kwh` rows or an http(s) URL answering JSON `{"carbon_g_per_kwh": N}`. '
        "Empty: declared figures only (nothing is fetched). A failing source falls back to "
        "the declared figure and says so in the host's status.",
    )
    carbon_refresh_s: float = _opt(
        300.0,
        "CRUCIBLE_CARBON_REFRESH_S",
        "How often the scheduler reads the grid carbon sources.",
    )
    meter_interval_s: float = _opt(
        30.0,
        "CRUCIBLE_METER_INTERVAL_S",
        "Running containers are metered (and charged in the ledger) in closed intervals of at "
        "most this length; costs are exact to the millisecond whatever it is. Shorter: "
        "balances and credit enforcement follow usage more closely, at a ledger entry per "
        "running container per interval.",
    )
    dict_max_entries: int = _opt(
        100_000,
        "CRUCIBLE_DICT_MAX_ENTRIES",
        "Most entries one crucible.Dict holds; a put past it fails with quota_exceeded.",
    )
    queue_max_items: int = _opt(
        100_000,
        "CRUCIBLE_QUEUE_MAX_ITEMS",
        "Most items one crucible.Queue holds (all partitions); a put past it fails with "
        "quota_exceeded.",
    )
    coordination_idle_expiry_days: float = _opt(
        30.0,
        "CRUCIBLE_COORDINATION_IDLE_EXPIRY_DAYS",
        "A crucible.Dict or crucible.Queue not read or written for this many days is deleted "
        "(0: never).",
    )
    retention_calls_days: float = _opt(
        30.0,
        "CRUCIBLE_RETENTION_CALLS_DAYS",
        "Finished calls older than this many days are deleted with their items (what "
        "generators yielded), WebSocket inboxes and earlier attempts (0: kept forever). "
        "Queued and running calls are never pruned; the ledger keeps every charge.",
    )
    retention_logs_days: float = _opt(
        30.0,
        "CRUCIBLE_RETENTION_LOGS_DAYS",
        "Log lines older than this many days are deleted (0: kept forever).",
    )
    retention_meter_days: float = _opt(
        90.0,
        "CRUCIBLE_RETENTION_METER_DAYS",
        "Metered intervals that ended more than this many days ago are deleted once their "
        "energy and emissions are copied onto their ledger charges, so statements do not "
        "change (0: kept forever). `crucible bill` sums the intervals still kept.",
    )
    retention_batch_rows: int = _opt(
        1000,
        "CRUCIBLE_RETENTION_BATCH_ROWS",
        "Rows (or blobs) retention deletes per transaction; the scheduler's housekeeping "
        "runs batches for at most about 0.2 s a minute, so pruning never stalls scheduling.",
    )
    blob_gc_grace_hours: float = _opt(
        24.0,
        "CRUCIBLE_BLOB_GC_GRACE_HOURS",
        "A blob that nothing references (no call, item, volume, code bundle or image) is "
        "deleted once its last upload or check (HEAD) is this many hours old, so uploads "
        "still in flight are never lost (0: blobs are never collected).",
    )
    volume_quota_gib: float = _opt(
        100.0,
        "CRUCIBLE_VOLUME_QUOTA_GIB",
        "Most GiB an account's volumes hold together (their latest versions); a commit past "
        "it fails with quota_exceeded and changes nothing.",
    )
    volume_price_gib_month_usd: float = _opt(
        0.10,
        "CRUCIBLE_VOLUME_PRICE_GIB_MONTH_USD",
        "What storing one GiB in volumes for 30 days costs, charged to the account through "
        "the ledger (to the platform) as it is used.",
    )
    volume_meter_interval_s: float = _opt(
        3600.0,
        "CRUCIBLE_VOLUME_METER_INTERVAL_S",
        "Volumes' storage is charged in intervals of about this length (and at every commit, "
        "so a size change is charged exactly).",
    )
    openb_trace_dir: str = _opt(
        "",
        "CRUCIBLE_OPENB_TRACE_DIR",
        "Folder of Alibaba's GPU cluster trace 2023 (openb CSV files) for the simulator's openb "
        "scenarios (a scenario's trace_dir wins). Not shipped with Crucible; empty: none.",
    )
    # -- market and ledger ------------------------------------------------------------------
    price_cpu_core_hour_usd: float = _opt(
        0.04,
        "CRUCIBLE_PRICE_CPU_CORE_HOUR_USD",
        "On-demand price of one CPU core for one hour on a host that has not priced its CPUs "
        "(`crucible host price cpu ...`).",
    )
    price_memory_gib_hour_usd: float = _opt(
        0.005,
        "CRUCIBLE_PRICE_MEMORY_GIB_HOUR_USD",
        "On-demand price of one GiB of memory for one hour on a host that has not priced it.",
    )
    default_interruptible_fraction: float = _opt(
        0.5,
        "CRUCIBLE_DEFAULT_INTERRUPTIBLE_FRACTION",
        "A host that has not priced a GPU model offers it on demand at the catalog's "
        "reference price, and takes interruptible bids from this fraction of it.",
    )
    default_reserved_fraction: float = _opt(
        0.8,
        "CRUCIBLE_DEFAULT_RESERVED_FRACTION",
        "...and sells reservations at this fraction of the reference price.",
    )
    platform_fee: float = _opt(
        0.1,
        "CRUCIBLE_PLATFORM_FEE",
        "The exchange's fee: this fraction of every metered interval goes to the platform, "
        "the rest to the host.",
    )
    preemption_grace_s: float = _opt(
        30.0,
        "CRUCIBLE_PREEMPTION_GRACE_S",
        "A preempted interruptible container gets SIGTERM, then SIGKILL this long after (its "
        "time to checkpoint). Metering stops at the SIGTERM.",
    )
    require_credits: bool = _opt(
        False,
        "CRUCIBLE_REQUIRE_CREDITS",
        "Renters need prepaid credits (`crucible credits grant`): at a zero balance, or past "
        "their daily spend cap, new calls are refused and running containers are drained "
        "(but for work inside their prepaid reservations). Off: usage is recorded in the "
        "ledger and balances may go negative.",
    )
    reliability_prior_leases: int = _opt(
        10,
        "CRUCIBLE_RELIABILITY_PRIOR_LEASES",
        "A host's published reliability counts this many fault-free leases in its favour "
        "before it has a history, so one early fault does not sink a new host.",
    )
    # -- tenancy and API hardening ---------------------------------------------------------
    dev_mode: bool = _opt(
        False,
        "CRUCIBLE_DEV_MODE",
        "A development exchange: hosts with declared fake GPUs (`crucible agent --fake-gpus`) "
        "may register (they are never verified). Off: such hosts are refused. `crucible up` "
        "and the test harness turn it on.",
    )
    self_test_interval_s: float = _opt(
        3600.0,
        "CRUCIBLE_SELF_TEST_INTERVAL_S",
        "How often an agent reruns its self-test (GPU matmul and memory bandwidth, CPU cores "
        "and memory) after the one at registration, and sends the figures for the server to "
        "verify against the GPU catalog (0: only at registration).",
    )
    submit_rate_per_s: float = _opt(
        10000.0,
        "CRUCIBLE_SUBMIT_RATE_PER_S",
        "Submit requests (calls, the job API's run/runsync, web endpoint requests) each token "
        "may send per second, sustained; past it the server answers 429 rate_limited with "
        "Retry-After (0: no limit).",
    )
    submit_burst: int = _opt(
        50000,
        "CRUCIBLE_SUBMIT_BURST",
        "Submit requests a token may send at once above the sustained rate (the token "
        "bucket's size).",
    )
    web_relay: bool = _opt(
        True,
        "CRUCIBLE_WEB_RELAY",
        "Hand a web endpoint's HTTP request straight to a container of it that waits for work, "
        "in memory, with no call row (the gateway's fast path); false: every request is a "
        "durable call.",
    )
    quote_rate_per_s: float = _opt(
        2000.0,
        "CRUCIBLE_QUOTE_RATE_PER_S",
        "Market quotes each token may ask for per second, sustained (429 past it; 0: no limit).",
    )
    quote_burst: int = _opt(
        10000, "CRUCIBLE_QUOTE_BURST", "Quotes a token may ask for at once above the rate."
    )
    # -- client ------------------------------------------------------------------------------
    server_url: str = _opt(
        "",
        "CRUCIBLE_SERVER_URL",
        "Control plane the SDK and CLI talk to. Empty: the one in $CRUCIBLE_HOME/client.json.",
    )
    token: str = _opt(
        "",
        "CRUCIBLE_TOKEN",
        "API token. Empty: the one in $CRUCIBLE_HOME/client.json.",
        secret=True,
    )
    # -- agent -------------------------------------------------------------------------------
    agent_dir: str = _opt(
        "",
        "CRUCIBLE_AGENT_DIR",
        "Agent state: code cache and container work dirs. Empty: $CRUCIBLE_HOME/agent.",
    )
    allow_fake_gpus: bool = _opt(
        False,
        "CRUCIBLE_ALLOW_FAKE_GPUS",
        "Permit `crucible agent --fake-gpus` (declared inventories for testing without GPUs).",
    )
    heartbeat_interval_s: float = _opt(
        1.0, "CRUCIBLE_HEARTBEAT_INTERVAL_S", "How often an idle agent reports to the server."
    )
    pod_disk_prune_s: float = _opt(
        600.0,
        "CRUCIBLE_POD_DISK_PRUNE_S",
        "How often an agent asks which pod disks it holds are no longer needed (deleted pods, "
        "pods moved to another host) and removes them; 0: never.",
    )
    access_max_sessions: int = _opt(
        16,
        "CRUCIBLE_ACCESS_MAX_SESSIONS",
        "Most access sessions (exec, port-forward connections, SSH) one account may hold at "
        "once on a server.",
    )
    access_dial_timeout_s: float = _opt(
        15.0,
        "CRUCIBLE_ACCESS_DIAL_TIMEOUT_S",
        "How long an access session waits for the container's agent to dial back.",
    )
    stop_grace_s: float = _opt(
        5.0,
        "CRUCIBLE_STOP_GRACE_S",
        "Between SIGTERM and SIGKILL when the agent stops a container.",
    )
    volume_stop_grace_s: float = _opt(
        50.0,
        "CRUCIBLE_VOLUME_STOP_GRACE_S",
        "Between SIGTERM and SIGKILL for a container that mounts volumes: it commits what it "
        "left uncommitted as it stops (a preemption keeps the market's grace; a stop is "
        "billed 60 s at most).",
    )
    runtime: str = _opt(
        "auto",
        "CRUCIBLE_RUNTIME",
        "How the agent runs containers: `auto` (`bwrap` where this machine can sandbox, else "
        "`process` with a warning), `bwrap` (bubblewrap sandboxes forked from per-image "
        "zygotes: for other people's code) or `process` (plain child processes: the host "
        "runs its owner's code only). See docs/sandbox.md.",
    )
    bwrap_bin: str = _opt("bwrap", "CRUCIBLE_BWRAP_BIN", "The bubblewrap binary (`bwrap` runtime).")
    uv_bin: str = _opt(
        "",
        "CRUCIBLE_UV_BIN",
        "The uv binary that builds images. Empty: the one the `uv` package ships, else `uv` on "
        "PATH.",
    )
    image_cache_max_mib: int = _opt(
        51200,
        "CRUCIBLE_IMAGE_CACHE_MAX_MIB",
        "Size of the agent's image cache; least recently used images not in use are deleted "
        "past it (0: no limit).",
    )
    oci_cache_max_mib: int = _opt(
        51200,
        "CRUCIBLE_OCI_CACHE_MAX_MIB",
        "Size of the agent's OCI image cache (blobs, unpacked layers and root file systems); "
        "least recently used images not in use are deleted past it (0: no limit).",
    )
    oci_image_max_mib: int = _opt(
        20480,
        "CRUCIBLE_OCI_IMAGE_MAX_MIB",
        "Largest OCI image the agent pulls (its layers, compressed, as the manifest declares "
        "them, and as they arrive; unpacked, 4 times this); a larger one fails with "
        "`image_too_large`.",
    )
    oci_registry_mirrors: str = _opt(
        "",
        "CRUCIBLE_OCI_REGISTRY_MIRRORS",
        "Registry mirrors, `REGISTRY=URL` separated by commas (`docker.io=http://127.0.0.1:5000`): "
        "the agent pulls that registry's images from the mirror instead.",
    )
    oci_insecure_registries: str = _opt(
        "",
        "CRUCIBLE_OCI_INSECURE_REGISTRIES",
        "Registries (`host:port`, commas) the agent reaches over plain HTTP instead of HTTPS; "
        "meant for a registry on loopback or a trusted private network.",
    )
    oci_pull_timeout_s: float = _opt(
        30.0,
        "CRUCIBLE_OCI_PULL_TIMEOUT_S",
        "Connect and read timeout of each request to a registry.",
    )
    sandbox_disk_mib: int = _opt(
        1024,
        "CRUCIBLE_SANDBOX_DISK_MIB",
        "Size of each sandbox's private /work and /tmp (memory-backed tmpfs, each).",
    )
    sandbox_max_processes: int = _opt(
        512,
        "CRUCIBLE_SANDBOX_MAX_PROCESSES",
        "Processes and threads one sandbox may hold (a pids cgroup where the host allows, "
        "RLIMIT_NPROC otherwise).",
    )
    sandbox_wall_clock_s: float = _opt(
        86400.0,
        "CRUCIBLE_SANDBOX_WALL_CLOCK_S",
        "A sandboxed container is stopped this long after it started (0: no limit).",
    )
    zygote_idle_s: float = _opt(
        300.0,
        "CRUCIBLE_ZYGOTE_IDLE_S",
        "A zygote (warm per-image process) with no container is ended after this long.",
    )
    cluster_net_port: int = _opt(
        0,
        "CRUCIBLE_CLUSTER_NET_PORT",
        "UDP port this host's cluster networks listen on (VXLAN between the members' hosts; "
        "let it through between your hosts, and from nowhere else). 0: a free port chosen "
        "when the agent starts.",
    )
    sandbox_uid_base: int = _opt(
        2_000_000_000,
        "CRUCIBLE_SANDBOX_UID_BASE",
        "First host uid of the range the agent (as root) gives its sandboxes, one uid per "
        "live sandbox (process limits, signals and files are per sandbox). Keep it clear of "
        "real users and of /etc/subuid ranges, and the range below 2147483648.",
    )
    sandbox_uid_count: int = _opt(
        65536,
        "CRUCIBLE_SANDBOX_UID_COUNT",
        "How many uids from CRUCIBLE_SANDBOX_UID_BASE the agent may use (the most sandboxes "
        "alive at once on this host, across its agents).",
    )
    sandbox_cgroups: bool = _opt(
        True,
        "CRUCIBLE_SANDBOX_CGROUPS",
        "Use pids, memory and CPU cgroups for sandboxes where the agent may create them; false "
        "keeps to per-sandbox uids and rlimits (what a host without cgroup delegation has).",
    )
    gpu_dev_root: str = _opt(
        "/dev",
        "CRUCIBLE_GPU_DEV_ROOT",
        "Where the agent finds GPU device nodes (nvidiaN, nvidiactl, nvidia-uvm, ...); they "
        "appear at /dev/... in a sandbox. Only tests change it.",
    )

    # -- derived paths -----------------------------------------------------------------------
    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser()

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_path / 'crucible.db'}"

    @property
    def blob_path(self) -> Path:
        return Path(self.blob_dir).expanduser() if self.blob_dir else self.home_path / "blobs"

    @property
    def agent_path(self) -> Path:
        return Path(self.agent_dir).expanduser() if self.agent_dir else self.home_path / "agent"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


SETTINGS_TABLE: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(Settings)


def _parse(value: str, kind: Any, env: str) -> Any:
    if kind in (bool, "bool"):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise SettingError(f"{env}={value!r}: expected true or false")
    number: float
    if kind in (int, "int"):
        try:
            number = int(value)
        except ValueError:
            raise SettingError(f"{env}={value!r}: expected an integer") from None
    elif kind in (float, "float"):
        try:
            number = float(value)
        except ValueError:
            raise SettingError(f"{env}={value!r}: expected a number") from None
        if not math.isfinite(number):
            raise SettingError(f"{env}={value!r}: expected a finite number")
    else:
        return value
    low, high = _RANGES.get(env, (0, None))
    if number < low or (high is not None and number > high):
        bound = f"at least {low}" if high is None else f"between {low} and {high}"
        raise SettingError(f"{env}={value!r}: must be {bound}")
    most = _most(env)
    if high is None and number > most:
        # Finite but past what a clock in milliseconds or a store integer holds: a server
        # started with it failed at start, or on every scheduler tick while healthy.
        raise SettingError(f"{env}={value!r}: must be at most {most:g}")
    return number


def _most(env: str) -> float:
    """The largest value a number setting may take, by its unit."""
    for suffix, most in (("_MS", 1e12), ("_S", 1e9), ("_HOURS", 1e7), ("_DAYS", 1e6)):
        if env.endswith(suffix):
            return most
    return float(2**53)


# Allowed ranges where "zero or more" is not enough; every other number must be >= 0.
_RANGES: dict[str, tuple[float, float | None]] = {
    "CRUCIBLE_PORT": (1, 65535),
    "CRUCIBLE_MAX_REQUEST_BYTES": (1, None),
    "CRUCIBLE_MAX_BLOB_BYTES": (1, None),
    "CRUCIBLE_MAX_CONTAINERS": (1, None),
    "CRUCIBLE_MAX_CLASS_POOLS": (1, 100_000),
    "CRUCIBLE_CRASH_LOOP_LIMIT": (1, None),
    "CRUCIBLE_SCHEDULER_INTERVAL_S": (0.001, None),
    "CRUCIBLE_METER_INTERVAL_S": (0.001, None),
    "CRUCIBLE_HEARTBEAT_INTERVAL_S": (0.001, None),
    "CRUCIBLE_HOST_TIMEOUT_S": (0.001, None),
    "CRUCIBLE_APP_HEARTBEAT_TIMEOUT_S": (0.001, None),
    "CRUCIBLE_SANDBOX_DISK_MIB": (1, None),
    "CRUCIBLE_SANDBOX_MAX_PROCESSES": (1, None),
    "CRUCIBLE_DEFAULT_INTERRUPTIBLE_FRACTION": (0, 1),
    "CRUCIBLE_DEFAULT_RESERVED_FRACTION": (0, 1),
    "CRUCIBLE_PLATFORM_FEE": (0, 1),
    "CRUCIBLE_DICT_MAX_ENTRIES": (1, None),
    "CRUCIBLE_QUEUE_MAX_ITEMS": (1, None),
    "CRUCIBLE_VOLUME_METER_INTERVAL_S": (1, None),
    "CRUCIBLE_SUBMIT_BURST": (1, None),
    "CRUCIBLE_QUOTE_BURST": (1, None),
    "CRUCIBLE_CONSOLE_SESSION_HOURS": (0.01, 24 * 366),
    "CRUCIBLE_LEADER_LEASE_S": (0.1, None),
    "CRUCIBLE_LEADER_RENEW_S": (0.05, None),
}


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from defaults, then the environment, then explicit ``overrides``."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in SETTINGS_TABLE:
        name = f.metadata["env"]
        if name in env:
            if name == "CRUCIBLE_HOME" and not env[name].strip():
                continue  # empty: the default, not the current directory
            values[f.name] = _parse(env[name], f.type, name)
    secret = env.get("CRUCIBLE_SECRET", "")
    if 0 < len(secret) < 16:
        # It signs every container token: a short one can be guessed.
        raise SettingError(
            f"CRUCIBLE_SECRET is {len(secret)} characters; it signs every container token and "
            "must be at least 16: make one with `python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`, or leave it unset to have one generated"
        )
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(**values)
    if settings.leader_lease_s < 2 * settings.leader_renew_s:
        # A lease shorter than two renewals lapses between them: leadership would flap.
        raise SettingError(
            f"CRUCIBLE_LEADER_LEASE_S={settings.leader_lease_s:g} must be at least twice "
            f"CRUCIBLE_LEADER_RENEW_S={settings.leader_renew_s:g} (the defaults are 5 and 1)"
        )
    return settings
