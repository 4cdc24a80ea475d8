"""Containers: what the agent is told to run, what it reports, and the worker's exchange."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from crucible.protocol.apps import CodeRef
from crucible.protocol.common import (
    MAX_WIRE_INT,
    ErrorInfo,
    FlatText,
    Payload,
    Resources,
    Wire,
    WireInt,
)
from crucible.protocol.egress import NetworkAsk
from crucible.protocol.images import ImageSpec
from crucible.protocol.pods import PodAssignment

__all__ = [
    "ContainerAssignment",
    "ContainerReport",
    "ContainerSummary",
    "Exchange",
    "ExchangeReply",
    "InputAssignment",
    "OutputItem",
]


class ContainerAssignment(Wire):
    container_id: str
    function_id: str
    account_id: str
    app_id: str
    code: CodeRef
    resources: Resources
    gpu_indices: list[WireInt] = Field(default_factory=list)
    is_async: bool = False
    max_inputs: int = Field(default=1, ge=1, le=1000)  # inputs it runs at once
    max_batch_size: int = Field(default=1, ge=1, le=1000)  # @crucible.batched
    class_params: dict[str, Any] | None = None  # an @app.cls() pool
    web: dict[str, Any] | None = None  # a web endpoint (see sdk/_web.py)
    batch_wait_ms: int = Field(default=0, ge=0, le=10_000)
    # Signed per-container token; it can only exchange this container's inputs and read its
    # account's blobs. The agent passes it to the worker and to nobody else.
    token: str
    image: ImageSpec | None = None
    # False: no network; True: every public IPv4 address; a list: only those "HOST:PORT"
    # targets (protocol/egress.py). Enforced by the agent (agent/egress.py).
    network: NetworkAsk = False
    # The function names secrets: the worker reads their values with its token at start.
    secrets: bool = False
    # Volumes to mount: path -> volume name (the runtime binds a directory at each path, the
    # worker fills it with the volume's latest version).
    volumes: dict[str, str] = Field(default_factory=dict)
    # A pod's container (docs/pods.md): it runs the pod's command under the pod supervisor
    # (crucible.worker.pod) instead of a function. None: a function's container.
    pod: PodAssignment | None = None


class ContainerReport(Wire):
    container_id: str = Field(max_length=64)
    # "pulling": its OCI image is being pulled (it has not started: nothing is metered).
    state: str = Field(pattern=r"^(pulling|starting|running|exited)$")
    pid: int | None = Field(default=None, ge=0, le=2**31)
    exit_code: int | None = Field(default=None, ge=-(2**31), le=2**31)
    # Why it exited: "exited" (worker returned), "killed" (signal), "stopped" (asked to),
    # "start_failed", "oom", "image_failed" (its image did not pull: it never ran, and the
    # function's queued calls fail with ``error_code``, one of the image error codes).
    reason: str | None = Field(default=None, max_length=32)
    # The agent's words (a renter reads them in its call's error): control characters become
    # spaces, as in every diagnostic an agent writes.
    message: FlatText | None = Field(default=None, max_length=100_000)
    error_code: str | None = Field(default=None, pattern=r"^image_[a-z_]{1,40}$")
    # Energy the container used since it started (GPUs and its share of the CPUs), in
    # milliwatt-hours, as the agent measured it (NVML, RAPL) or estimated it from the
    # catalog's power figures (``energy_estimated``). None: an agent that does not meter.
    energy_mwh: int | None = Field(default=None, ge=0, le=2**53)
    energy_estimated: bool = False
    # A crashed container's last lines of stdout and stderr (oldest first): the worker
    # ships its lines about every half second, so those printed just before a crash are
    # stored from here (the server adds the ones it does not have yet).
    log_tail: list[Annotated[str, Field(max_length=8192)]] | None = Field(
        default=None, max_length=20
    )


class InputAssignment(Wire):
    call_id: str
    attempt: WireInt
    args: Payload
    timeout_s: float


class OutputItem(Wire):
    call_id: str
    attempt: WireInt
    status: str = Field(pattern=r"^(succeeded|failed|timed_out)$")
    result: Payload | None = None
    error: ErrorInfo | None = None
    # How long the function ran, in microseconds (stored and billed in milliseconds; the
    # autoscaler needs the finer figure for functions that take less than one).
    exec_us: int = Field(default=0, ge=0, le=MAX_WIRE_INT)

    @property
    def exec_ms(self) -> int:
        return (self.exec_us + 500) // 1000


class Exchange(Wire):
    """The worker's one request: outputs of finished inputs in, up to ``want`` new inputs
    out. The server answers at once when it has inputs, otherwise within ``wait_s``."""

    outputs: list[OutputItem] = Field(default_factory=list, max_length=10_000)
    want: int = Field(default=1, ge=0, le=10_000)
    wait_s: float = Field(default=0.0, ge=0, le=60)
    # The calls the worker has in hand (received, output not yet acknowledged), sent by its
    # one input-asking loop. A call running on the container and missing here never reached
    # the worker (its reply was lost with a server or a connection) and is queued again.
    # None (older workers, the output reporter): nothing is reconciled.
    held: list[Annotated[str, Field(max_length=64)]] | None = Field(default=None, max_length=10_000)
    # The worker could not load its function (import, an @enter hook, its image): it fails
    # what it is given with that error and exits. Such a container never becomes ready, so
    # the scheduler counts it towards a crash loop (backoff) instead of replacing it at once.
    init_failed: bool = False


class ExchangeReply(Wire):
    inputs: list[InputAssignment] = Field(default_factory=list)
    # The container should finish its inputs in hand and exit.
    stop: bool = False


class ContainerSummary(Wire):
    """One of the caller's containers (``GET /v1/containers``, ``crucible container list``):
    what ``crucible container exec|ssh|port-forward`` take."""

    id: str
    app_id: str
    app: str  # the app's name
    function: str
    state: str  # pending | starting | running | stopping | stopped
    gpu_model: str | None = None
    gpu_count: WireInt = 0
    cpu: float = 0.0
    memory_mib: WireInt = 0
    created_ms: WireInt
    ready_ms: WireInt | None = None
    stopped_ms: WireInt | None = None
    exit_reason: str | None = None
