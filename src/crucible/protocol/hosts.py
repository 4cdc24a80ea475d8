"""Hosts, their inventory, and the agent's sync loop."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from crucible.protocol.access import AccessRequest
from crucible.protocol.common import FlatText, HostLabel, PrintableText, Wire, WireInt, Words
from crucible.protocol.containers import ContainerAssignment, ContainerReport

__all__ = [
    "DeviceInfo",
    "HostInfo",
    "HostRegister",
    "HostSync",
    "HostSyncReply",
    "HostVerification",
    "Inventory",
    "IsolationReport",
    "PodDisks",
    "PodDisksReply",
    "SelfTestResult",
    "isolation_summary",
    "verification_summary",
]


class DeviceInfo(Wire):
    index: int = Field(ge=0, le=1023)
    model: PrintableText = Field(min_length=1, max_length=64)
    memory_mib: int = Field(ge=0, le=2**40)
    uuid: PrintableText = Field(min_length=1, max_length=128)
    fake: bool = False


class Inventory(Wire):
    # The placement engine indexes nodes of up to 65,536 cores (core/placement.py
    # MAX_NODE_CPU_MILLI); the largest machines have a few thousand.
    cpu_cores: float = Field(gt=0, le=65_536)
    memory_mib: int = Field(gt=0, le=2**40)
    disk_mib: int = Field(ge=0, le=2**50)
    gpus: list[DeviceInfo] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _distinct_devices(self) -> Inventory:
        indices = [g.index for g in self.gpus]
        uuids = [g.uuid for g in self.gpus]
        if len(set(indices)) != len(indices) or len(set(uuids)) != len(uuids):
            raise ValueError("each GPU must have its own index and UUID")
        return self


class IsolationReport(Wire):
    """What a host enforces on the code it runs, measured by its agent at start-up (not
    assumed from its configuration). The server places code of an account other than the
    host's owner only on hosts whose report is :meth:`full`."""

    runtime: Literal["process", "bwrap", "oci"]
    namespaces: bool = False  # user, PID, mount, IPC, UTS namespaces per sandbox
    seccomp: bool = False  # a syscall filter in every sandbox
    per_sandbox_uid: bool = False  # each sandbox runs as its own host uid (process counts,
    # signals and files are per sandbox)
    pids_limit: Literal["cgroup", "rlimit-uid", "none"] = "none"  # rlimit-uid is per sandbox
    # only together with per_sandbox_uid
    memory_limit: Literal["cgroup", "rlimit", "none"] = "none"
    cpu_limit: Literal["cgroup", "none"] = "none"
    disk_limit: Literal["tmpfs", "quota", "none"] = "none"
    network_policy: bool = False  # no network unless asked; egress only through the agent,
    # never the host's loopback, its ports or link-local metadata addresses
    gpu_isolation: bool = False  # a container sees only its assigned GPUs' device nodes
    # Measured: a sandbox that asks for egress (network=True or an allowlist) gets it through
    # user-mode networking and a filter that held (no host address, no link-local, nothing
    # outside the ask). Other accounts' code that asks for network runs only where it is set;
    # it is not part of full() (code that asks for no network needs none of it).
    egress_filter: bool = False
    # Measured: the agent built a cluster's private network (a bridge in a namespace of its
    # own, linked to other hosts by VXLAN on ``cluster_net_port``, UDP). Other accounts'
    # clusters are placed only where it is set; not part of full().
    cluster_network: bool = False
    cluster_net_port: int | None = Field(default=None, ge=1, le=65535)
    # What is missing, in words a host operator can act on ("no pids cgroup: ...").
    problems: list[Annotated[FlatText, Field(max_length=2000)]] = Field(
        default_factory=list, max_length=64
    )

    def full(self) -> bool:
        """Whether strangers' code may run here: every protection in place. A CPU quota is
        reported but not required (it needs cgroup delegation, which many rented VMs lack)."""
        pids = self.pids_limit == "cgroup" or (
            self.pids_limit == "rlimit-uid" and self.per_sandbox_uid
        )
        return (
            self.runtime != "process"
            and self.namespaces
            and self.seccomp
            and self.per_sandbox_uid
            and pids
            and self.memory_limit != "none"
            and self.disk_limit != "none"
            and self.network_policy
            and self.gpu_isolation
        )

    def admits_network(self) -> bool:
        """Whether other accounts' code that asks for network egress may run here."""
        return self.full() and self.egress_filter

    def missing(self) -> list[str]:
        """What keeps this report from :meth:`full`, in short words ("seccomp", "pids
        limit", ...); empty when it is full."""
        pids = self.pids_limit == "cgroup" or (
            self.pids_limit == "rlimit-uid" and self.per_sandbox_uid
        )
        checks = [
            (self.runtime != "process", f"sandbox (runtime {self.runtime})"),
            (self.namespaces, "namespaces"),
            (self.seccomp, "seccomp"),
            (self.per_sandbox_uid, "per-sandbox uid"),
            (pids, "pids limit"),
            (self.memory_limit != "none", "memory limit"),
            (self.disk_limit != "none", "disk limit"),
            (self.network_policy, "network policy"),
            (self.gpu_isolation, "GPU isolation"),
        ]
        return [what for ok, what in checks if not ok]

    def summary(self) -> str:
        """One line for tables: ``bwrap, full, egress filtered`` (or ``no egress``) or
        ``process: missing sandbox, ...``."""
        missing = self.missing()
        egress = "egress filtered" if self.egress_filter else "no egress"
        if self.cluster_network:
            egress += ", cluster network"
        if not missing:
            return f"{self.runtime}, full, {egress}"
        return f"{self.runtime}: missing " + ", ".join(missing)


def isolation_summary(report: IsolationReport | None) -> str:
    """A host's isolation in one line; no report (an older agent) reads as runtime process."""
    if report is None:
        return "process: no isolation report (an older agent)"
    return report.summary()


# A self-test figure's name ("matmul_tflops") and value: a measurement, finite and at most a
# billion (no machine measures more cores, TFLOPS or GB/s than that).
FigureName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]
Figure = Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]


class SelfTestResult(Wire):
    """One figure set of the agent's self-test: per GPU (a matmul's throughput and the memory
    bandwidth, through the real CUDA/NVML path) or for the CPUs (cores and memory)."""

    kind: Literal["gpu", "cpu"]
    device_index: int | None = Field(default=None, ge=0, le=1023)  # for kind == "gpu"
    model: PrintableText = Field(min_length=1, max_length=64)  # catalog GPU model, or "cpu"
    # e.g. {"matmul_tflops": ..., "mem_bandwidth_gbs": ...} or {"cores": ..., "gflops": ...}
    figures: dict[FigureName, Figure] = Field(default_factory=dict, max_length=32)
    fake: bool = False  # measured on a declared fake device: never verifies a host
    measured_ms: int = Field(ge=0, le=2**53)
    error: FlatText | None = Field(default=None, max_length=2000)


class HostVerification(Wire):
    """The server's verdict on a host's self-test: its figures compared with the GPU catalog
    (and the CPU check). ``reason`` says why a host is not verified, or what matched."""

    verified: bool
    reason: str = Field(max_length=4000)
    checked_ms: WireInt
    results: list[SelfTestResult] = Field(default_factory=list, max_length=128)


def verification_summary(verified: bool, verification: HostVerification | None) -> str:
    """A host's verification in one line: ``yes: ...`` or ``no: <why>``."""
    if verification is None:
        return "no: no self-test results yet"
    return ("yes: " if verified else "no: ") + verification.reason


class HostRegister(Wire):
    # Shown to every account (`crucible hosts`, the market): names, not free text.
    name: HostLabel
    region: HostLabel = "local"
    # Declared by the host's operator; None keeps what the host has on record.
    energy_source: Words | None = None
    carbon_g_per_kwh: int | None = Field(default=None, ge=0, le=5000)
    inventory: Inventory
    agent_version: PrintableText = Field(default="", max_length=64)
    # Measured by the agent; None from an older agent (treated as runtime "process").
    isolation: IsolationReport | None = None
    self_test: list[SelfTestResult] = Field(default_factory=list, max_length=128)
    # Where this host's cluster members are reached (an IP address or host name); None:
    # not announced (clusters tell members the control plane's view of nothing then).
    address: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9.:\-]+$")
    # The agent_session this agent process was given before (it registers again, its
    # containers still running); None: a new agent process, whose predecessor's containers
    # are gone (it ended them).
    resumes_session: int | None = Field(default=None, ge=1, le=2**53)


class HostInfo(Wire):
    id: str
    name: str
    region: str
    state: str  # ready | lost | offline (its agent stopped and said so)
    inventory: Inventory
    last_seen_ms: WireInt
    registered_ms: WireInt
    allocated_cpu: float = 0.0
    allocated_memory_mib: WireInt = 0
    allocated_gpus: list[WireInt] = Field(default_factory=list)
    containers: WireInt = 0
    # Energy and carbon: the declared source and intensity, the intensity in force now (from
    # the operator's grid source for the region, or the declared figure), where it came from
    # ("declared", "grid"), why a grid source was not used (None: nothing to say), and power
    # readings the agent dropped as negative or absurd.
    energy_source: str = "unknown"
    declared_carbon_g_per_kwh: WireInt | None = None
    carbon_g_per_kwh: WireInt | None = None
    carbon_source: str = "declared"
    carbon_note: str | None = None
    energy_readings_dropped: WireInt = 0
    # Tenancy: the agent's measured report (None: an older agent, runtime process); whether
    # it is full (strangers' code may run here); the self-test's verdict.
    isolation: IsolationReport | None = None
    isolated: bool = False
    verified: bool = False
    verification: HostVerification | None = None
    # How many times an agent registered this host: the newest registration's number, which
    # that agent sends with its syncs (HostSync.agent_session).
    agent_session: WireInt = 0


class HostSync(Wire):
    """The agent's heartbeat: what its containers are doing. The server answers at once if it
    has work for the host, otherwise within ``wait_s``."""

    containers: list[ContainerReport] = Field(default_factory=list, max_length=10_000)
    wait_s: float = Field(default=0.0, ge=0, le=60)
    # Increases with every sync an agent process sends (from 1 after each registration).
    # Reports may race each other from two agent threads; the server ignores one older than
    # the newest it has seen, so a stale report never declares a running container gone.
    seq: int = Field(default=0, ge=0, le=2**53)
    # A periodic self-test's fresh results, sent once when they are new.
    self_test: list[SelfTestResult] | None = Field(default=None, max_length=128)
    # Power readings the agent dropped since it started (negative, or beyond what the
    # devices can draw); shown in the host's status.
    energy_readings_dropped: int | None = Field(default=None, ge=0, le=2**53)
    # The registration this agent process holds (HostInfo.agent_session). A sync from an
    # older registration (another agent took the host's name since) is refused with
    # host_superseded. None: an older agent, not checked.
    agent_session: int | None = Field(default=None, ge=1, le=2**53)
    # The agent is stopping: its containers have ended (this sync reports them) and the
    # host takes no more work until an agent registers it again (it is ``offline`` now,
    # instead of being placed on until the host timeout finds it silent).
    leaving: bool = False


class PodDisks(Wire):
    """The pod disks an agent holds (``<agent dir>/pods/<pod id>``), asked about now and then
    so that disks nobody will use again are removed."""

    pod_ids: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(max_length=10_000)


class PodDisksReply(Wire):
    # Of the pods asked about, those whose disks this host is to remove: deleted pods, pods
    # that never ran here, and pods that moved to another host and run nothing here.
    prune: list[str] = Field(default_factory=list)


class HostSyncReply(Wire):
    start: list[ContainerAssignment] = Field(default_factory=list)
    stop: list[str] = Field(default_factory=list)
    # SIGTERM→SIGKILL grace of stops that have their own (a preemption's), else the agent's.
    grace_s: dict[str, float] = Field(default_factory=dict)
    heartbeat_interval_s: float = 1.0
    # Access sessions (exec, tunnels, SSH) the agent is to dial back for (protocol/access.py).
    access: list[AccessRequest] = Field(default_factory=list)
