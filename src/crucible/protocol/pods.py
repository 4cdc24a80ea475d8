"""Pods: GPU (or CPU) machines rented as a lease held until stopped, on the wire.

``PodCreate`` is what a client sends: raw strings (``gpu="H100:8"``, ``disk="100GiB"``,
``ports=["8888/http"]``) that :func:`parse_pod` turns into a :class:`PodSpec`, or refuses
with an error that names the bad value and what to write instead. The server stores the
``PodSpec``; the agent receives a :class:`PodAssignment` inside the pod's
``ContainerAssignment``. Parsing is pure (no I/O) and shared by the SDK, the CLI and the
server, so a typo is caught before anything is sent and again by the server.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

from pydantic import Field, field_validator

from crucible.errors import InvalidGpuError, InvalidRequestError, InvalidResourcesError
from crucible.protocol.apps import SECRET_NAME, MarketTerms
from crucible.protocol.common import Wire, WireInt
from crucible.protocol.gpus import parse_gpu_request, parse_memory_mib
from crucible.protocol.volumes import check_mount_path

__all__ = [
    "MAX_NODES",
    "NOT_PLACED_YET",
    "POD_NAME",
    "POD_STATES",
    "ClusterCreate",
    "ClusterInfo",
    "ClusterNetPlan",
    "ClusterPeer",
    "PodAssignment",
    "PodCreate",
    "PodInfo",
    "PodPort",
    "PodSpec",
    "check_pod_name",
    "check_ssh_key",
    "parse_disk_bytes",
    "parse_env",
    "parse_pod",
    "parse_port",
    "pod_env",
    "port_env",
    "port_path",
]

# A pending pod's reason before the scheduler has said why it waits (it has not looked yet,
# or every host that could take the pod is busy).
NOT_PLACED_YET = "not placed yet: it goes to a host as soon as one can take it"

# A pod's name becomes a host name inside a cluster: DNS-label-like, 1-63 characters.
POD_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ID_SHAPED = re.compile(r"^[a-z]{2}-([0-9a-z]{8}|[0-9a-z]{22})$")  # a full or short id
# pending → pulling → starting → running → stopping → stopped; or preempted / failed; and
# deleted (kept so that ``start`` on a deleted pod can say so).
POD_STATES = (
    "pending",
    "pulling",
    "starting",
    "running",
    "stopping",
    "stopped",
    "preempted",
    "failed",
    "deleted",
)
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_PORT = re.compile(r"^([0-9]{1,5})(?:/(http|tcp))?$")
_DISK = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?)?\s*$", re.IGNORECASE)
_DISK_UNITS = {
    "k": 1024,
    "ki": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gi": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "ti": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}
MIN_DISK_BYTES = 64 * 1024**2
MAX_DISK_BYTES = 64 * 1024**4
MAX_ENV = 128
MAX_PORTS = 16
MAX_SSH_KEYS = 16
DEFAULT_DISK = "10GiB"


class PodPort(Wire):
    port: int = Field(ge=1, le=65535)
    protocol: str = Field(default="http", pattern=r"^(http|tcp)$")

    def __str__(self) -> str:
        return f"{self.port}/{self.protocol}"


def port_path(pod_id: str, port: int) -> str:
    """The path at which the exchange publishes HTTP ``port`` of pod ``pod_id``: the same
    for the pod's whole life (stop/start included), unlike its container's id."""
    return f"/pods/{pod_id}/ports/{port}/"


def port_env(pod_id: str, ports: list[PodPort]) -> dict[str, str]:
    """``CRUCIBLE_PORT_{N}_PATH`` for each published HTTP port: the prefix a web app must
    serve under (Jupyter's ``--ServerApp.base_url``, TensorBoard's ``--path_prefix``)."""
    return {
        f"CRUCIBLE_PORT_{p.port}_PATH": port_path(pod_id, p.port)
        for p in ports
        if p.protocol == "http"
    }


class PodCreate(Wire):
    """A pod as a client asks for it. Strings are parsed by :func:`parse_pod`."""

    name: str = Field(max_length=10_000)
    gpu: str | None = Field(default=None, max_length=64)  # "H100:8"; None: a CPU pod
    cpu: float | None = Field(default=None, gt=0, le=1024)  # cores (default: 1 per GPU, min 1)
    memory: str | None = Field(default=None, max_length=32)  # "16GiB" (default: 4 GiB per GPU)
    image: str | None = Field(default=None, max_length=512)  # OCI reference; None: default
    disk: str = Field(default=DEFAULT_DISK, max_length=32)
    command: str | None = Field(default=None, max_length=16_384)  # run with sh -c
    env: dict[str, str] = Field(default_factory=dict)
    ports: list[str] = Field(default_factory=list)
    ssh_keys: list[str] = Field(default_factory=list)
    volumes: dict[str, str] = Field(default_factory=dict)  # mount path -> volume name
    market: MarketTerms = Field(default_factory=MarketTerms)

    @field_validator("name")
    @classmethod
    def _name_length(cls, name: str) -> str:
        if len(name) > 63:  # the rest of the rule is check_pod_name's, with its words
            raise ValueError(
                f"a pod name is 1-63 characters ({len(name)} given): use lowercase letters, "
                "digits and '-', starting and ending with a letter or digit (e.g. 'train-1')"
            )
        return name


MAX_NODES = 64


class ClusterCreate(PodCreate):
    """``nodes`` pods of the same spec, placed all at once or not at all; member ``i`` is
    the pod ``NAME-i`` and is told RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT."""

    nodes: int = Field(ge=2, le=MAX_NODES)


class PodSpec(Wire):
    """A parsed, valid pod: what the server stores."""

    name: str
    gpu_model: str | None = None
    gpu_count: WireInt = 0
    cpu: float
    memory_mib: WireInt
    image: str | None = None
    disk_bytes: WireInt
    command: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    ports: list[PodPort] = Field(default_factory=list)
    ssh_keys: list[str] = Field(default_factory=list)
    volumes: dict[str, str] = Field(default_factory=dict)
    market: MarketTerms = Field(default_factory=MarketTerms)

    @property
    def gpu(self) -> str | None:
        if self.gpu_model is None:
            return None
        return f"{self.gpu_model}:{self.gpu_count}"


class ClusterPeer(Wire):
    """Where another member's host receives its cluster networks' traffic (VXLAN, UDP)."""

    address: str = Field(max_length=64, pattern=r"^[A-Za-z0-9.:\-]+$")
    port: int = Field(ge=1, le=65535)


class ClusterNetPlan(Wire):
    """A cluster member's place on its cluster's private network (docs/pods.md): the
    cluster's /24, its VXLAN id and port range, the member's own address, and the other
    members' hosts (one entry per host, this one excluded)."""

    cluster_id: str = Field(max_length=64)
    subnet: str = Field(max_length=18)
    address: str = Field(max_length=15)
    vni: int = Field(ge=1, le=(1 << 24) - 1)
    port_lo: int = Field(ge=1, le=65535)
    port_hi: int = Field(ge=1, le=65535)
    peers: list[ClusterPeer] = Field(default_factory=list, max_length=MAX_NODES)


class PodAssignment(Wire):
    """What the agent needs to run a pod's container (inside ``ContainerAssignment.pod``)."""

    pod_id: str
    name: str
    image: str | None = None  # None: the exchange's default image (the host's Python)
    command: str | None = None  # None: the image's (the default image: wait until stopped)
    env: dict[str, str] = Field(default_factory=dict)
    ports: list[PodPort] = Field(default_factory=list)
    ssh_keys: list[str] = Field(default_factory=list)
    disk_bytes: WireInt
    # A cluster member on a private network (None: not a member, or its hosts cannot build
    # one and it uses theirs).
    network: ClusterNetPlan | None = None


class PodInfo(Wire):
    id: str
    name: str
    state: str
    reason: str | None = None
    # Pending, and no host the exchange knows could ever run it as asked (the reason says
    # why and what to change): it stays pending, in case such a host joins.
    unplaceable: bool = False
    gpu: str | None = None
    cpu: float
    memory_mib: WireInt
    image: str | None = None
    disk_bytes: WireInt
    command: str | None = None
    env_keys: list[str] = Field(default_factory=list)  # values are not echoed back
    ssh_key_count: WireInt = 0  # public keys it was created with (--ssh-key)
    ports: list[str] = Field(default_factory=list)
    # With CRUCIBLE_PORTS_DOMAIN set, each published HTTP port is served on its own host:
    # port -> that URL (a token sent to the exchange's own URL of the port would be dropped
    # by the redirect there). Empty otherwise: the port is at {server}/pods/{id}/ports/{N}/.
    port_urls: dict[str, str] = Field(default_factory=dict)
    volumes: dict[str, str] = Field(default_factory=dict)
    tier: str = "on_demand"
    app_id: str
    host_id: str | None = None
    container_id: str | None = None
    rate_micros_per_hour: WireInt | None = None
    cost_micros: WireInt = 0
    created_ms: WireInt
    started_ms: WireInt | None = None
    stopped_ms: WireInt | None = None
    # A cluster's member: the cluster, the member's rank, and the address it was given.
    cluster_id: str | None = None
    rank: WireInt | None = None
    address: str | None = None

    def http_ports(self) -> list[int]:
        """The ports it publishes as HTTP (``ports`` reads ``"8888/http"``, ``"22/tcp"``)."""
        return [int(p.partition("/")[0]) for p in self.ports if p.endswith("/http")]


class ClusterInfo(Wire):
    id: str
    name: str
    nodes: WireInt
    state: str
    reason: str | None = None
    gpu: str | None = None
    master_addr: str | None = None
    master_port: WireInt
    cost_micros: WireInt = 0
    created_ms: WireInt
    members: list[PodInfo] = Field(default_factory=list)


def check_pod_name(name: str, what: str = "pod") -> str:
    """A pod's (or a cluster's, ``what``) name: a DNS label that is not shaped like an id.
    Commands take a name or an id (``pd-n1dsrye7``); a pod named like another's short id
    made `pod rm NAME` delete the other pod."""
    if not isinstance(name, str) or not POD_NAME.match(name):
        shown = name[:80] if isinstance(name, str) else name
        raise InvalidRequestError(
            f"{what} name {shown!r} is not valid: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (e.g. 'train-1')"
        )
    if _ID_SHAPED.match(name):
        raise InvalidRequestError(
            f"{what} name {name!r} has the shape of an id (two letters, '-', then 8 or 22 "
            "letters and digits), which commands read as one: pick another name"
        )
    return name


def parse_disk_bytes(text: str) -> int:
    """``"100GiB"`` → bytes (64 MiB to 64 TiB); a bare number is GiB."""
    match = _DISK.match(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidResourcesError(
            f"disk {str(text)[:40]!r} is not a size: write e.g. '100GiB', '500GB' or '1TiB'"
        )
    unit = (match.group(2) or "gib").lower()
    size = int(float(match.group(1)) * _DISK_UNITS[unit])
    if not MIN_DISK_BYTES <= size <= MAX_DISK_BYTES:
        raise InvalidResourcesError(
            f"disk {text!r} is out of range: a pod's disk is 64MiB to 64TiB"
        )
    return size


def parse_port(text: str) -> PodPort:
    """``"8888/http"``, ``"22/tcp"`` or ``"8888"`` (http)."""
    match = _PORT.match(text.strip()) if isinstance(text, str) else None
    if match is None or not 1 <= int(match.group(1)) <= 65535:
        raise InvalidRequestError(
            f"port {str(text)[:40]!r} is not valid: write PORT/http or PORT/tcp with PORT "
            "1-65535, e.g. '8888/http'"
        )
    return PodPort(port=int(match.group(1)), protocol=match.group(2) or "http")


def parse_env(pairs: list[str]) -> dict[str, str]:
    """``["K=V", ...]`` → a dict, refusing bad keys (the CLI's ``--env``)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidRequestError(f"--env {pair[:40]!r}: write KEY=VALUE")
        out[key] = value
    return out


def _check_env(env: dict[str, str]) -> dict[str, str]:
    if len(env) > MAX_ENV:
        raise InvalidRequestError(f"a pod takes at most {MAX_ENV} environment variables")
    for key, value in env.items():
        if not _ENV_KEY.match(key):
            raise InvalidRequestError(
                f"env key {key[:40]!r} is not a variable name: letters, digits and _, not "
                "starting with a digit (e.g. MY_VAR=1)"
            )
        if key.startswith("CRUCIBLE_"):
            raise InvalidRequestError(f"env key {key!r} uses the reserved prefix CRUCIBLE_")
        if "\x00" in value or len(value) > 32_768:
            raise InvalidRequestError(f"env {key}: the value holds a NUL byte or is over 32 KiB")
    return dict(env)


def check_ssh_key(key: str) -> str:
    parts = key.strip().split()
    if not key.strip().isprintable():
        raise InvalidRequestError(
            "an SSH key must be one line of printable text (one key per --ssh-key line)"
        )
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-", "sk-")) or len(key) > 16_384:
        raise InvalidRequestError(
            "an SSH key must be a public key line such as 'ssh-ed25519 AAAA... you@host' "
            "(the .pub file, never the private key)"
        )
    return key.strip()


def parse_pod(req: PodCreate) -> PodSpec:
    """Check and normalise a pod request; raises an :class:`InvalidRequestError` subclass
    naming the bad value and what to write."""
    name = check_pod_name(req.name)
    gpu_model, gpu_count = None, 0
    if req.gpu is not None:
        try:
            ask = parse_gpu_request(req.gpu)
        except InvalidGpuError as exc:
            raise InvalidGpuError(f"--gpu: {exc.message}; write e.g. 'H100:8'") from None
        gpu_model, gpu_count = ask.model, ask.count
    if gpu_model is None and req.market.tier != "on_demand":
        # The scheduler places CPU pods at the host's on-demand price: such a pod was shown
        # as interruptible and charged on demand.
        raise InvalidRequestError(
            f"--tier {req.market.tier.replace('_', '-')} is for GPU pods (give --gpu): a CPU "
            "pod is placed by the scheduler, at its host's on-demand price"
        )
    cpu = req.cpu if req.cpu is not None else float(max(1, gpu_count))
    memory_mib = parse_memory_mib(req.memory, default=4096 * max(1, gpu_count))
    image = req.image.strip() if req.image else None
    if image is not None and (not image or any(c.isspace() for c in image)):
        raise InvalidRequestError(
            f"image {req.image!r} is not an image reference: write e.g. "
            "'python:3.12-slim' or 'registry.example.com/team/train:v3'"
        )
    if len(req.ports) > MAX_PORTS:
        raise InvalidRequestError(f"a pod publishes at most {MAX_PORTS} ports")
    ports = [parse_port(p) for p in req.ports]
    seen: set[int] = set()
    for p in ports:
        if p.port in seen:
            raise InvalidRequestError(f"port {p.port} is given twice")
        seen.add(p.port)
    if len(req.ssh_keys) > MAX_SSH_KEYS:
        raise InvalidRequestError(f"a pod takes at most {MAX_SSH_KEYS} SSH keys")
    volumes: dict[str, str] = {}
    for path, vol in req.volumes.items():
        if not SECRET_NAME.match(vol):
            raise InvalidRequestError(
                f"volume name {vol[:80]!r} is not valid; write --volume NAME:/path"
            )
        try:
            volumes[check_mount_path(path)] = vol
        except ValueError as exc:
            raise InvalidRequestError(f"--volume {vol}:{path[:80]}: {exc}") from None
    if req.command is not None and "\x00" in req.command:
        raise InvalidRequestError("the pod's command holds a NUL byte")
    return PodSpec(
        name=name,
        gpu_model=gpu_model,
        gpu_count=gpu_count,
        cpu=cpu,
        memory_mib=memory_mib,
        image=image,
        disk_bytes=parse_disk_bytes(req.disk),
        command=req.command or None,
        env=_check_env(req.env),
        ports=ports,
        ssh_keys=[check_ssh_key(k) for k in req.ssh_keys],
        volumes=volumes,
        market=req.market,
    )


def pod_env(
    pod: PodAssignment, container_env: Mapping[str, str], *, disk: str, python_dir: str
) -> dict[str, str]:
    """What a pod's command sees, and every session in it (`pod exec`, `pod ssh`): its OCI
    image's ENV (its PATH among them), else the host's environment with ``python_dir`` (the
    agent's interpreter, the default image's `python`) first on PATH; its disk as HOME;
    its id, name and published ports' paths; then its own ``--env``. ``container_env`` is
    the container's (what the agent gives its worker)."""
    image_env = json.loads(container_env.get("CRUCIBLE_POD_IMAGE_ENV") or "{}")
    path = container_env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    default_image = "CRUCIBLE_POD_IMAGE_ENV" not in container_env
    if default_image and python_dir and python_dir not in path.split(os.pathsep):
        path = python_dir + os.pathsep + path
    return {
        **{str(k): str(v) for k, v in image_env.items()},
        "PATH": path,
        "LANG": container_env.get("LANG", "C.UTF-8"),
        "HOME": disk,
        "CUDA_VISIBLE_DEVICES": container_env.get("CUDA_VISIBLE_DEVICES", ""),
        "NVIDIA_VISIBLE_DEVICES": container_env.get("NVIDIA_VISIBLE_DEVICES", ""),
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CRUCIBLE_POD_ID": pod.pod_id,
        "CRUCIBLE_POD_NAME": pod.name,
        "CRUCIBLE_POD_DISK": disk,
        **port_env(pod.pod_id, pod.ports),  # where the exchange publishes its HTTP ports
        **pod.env,
    }
