"""Apps and functions."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from crucible.protocol.classes import ClassSpec
from crucible.protocol.common import (
    HostLabel,
    JsonValue,
    Named,
    Resources,
    RetryPolicy,
    Wire,
    WireInt,
)
from crucible.protocol.egress import NetworkAsk
from crucible.protocol.images import ImageSpec
from crucible.protocol.schedules import ScheduleSpec
from crucible.protocol.volumes import check_mount_path

__all__ = [
    "FUNCTION_KINDS",
    "AppCreate",
    "AppInfo",
    "CodeRef",
    "FunctionCreate",
    "FunctionInfo",
    "MarketTerms",
    "function_kind",
]

SECRET_NAME = re.compile(r"^(?!\.+$)[A-Za-z0-9_.\-]{1,128}$")  # not "." or ".."
MAX_PRICE_MICROS = 1_000_000_000  # $1,000 per device-hour: anything above is a typo


class AppCreate(Named):
    ephemeral: bool = True


class AppInfo(Wire):
    id: str
    name: str
    state: str  # running | stopped
    ephemeral: bool
    created_ms: WireInt
    stopped_ms: WireInt | None = None
    functions: WireInt = 0
    # Its containers not yet stopped (a stopped app's last ones may still be stopping:
    # their time is billed once they are).
    containers: WireInt = 0


class CodeRef(Wire):
    """Where a function's code is: a content-addressed source bundle (zip) and the module
    and qualified name inside it. The worker imports the module from the bundle."""

    bundle: str = Field(pattern=r"^[0-9a-f]{64}$")
    module: str = Field(min_length=1, max_length=512)
    qualname: str = Field(min_length=1, max_length=512)
    # The module has @crucible.enter(snapshot=True) hooks: a sandbox's zygote imports it and
    # runs them before forking (module-level code then runs there, without a container's
    # environment or secrets). False: every container imports the module itself.
    snapshot: bool = False


class MarketTerms(Wire):
    """How a function buys its GPUs (see docs/market.md). Prices are micro-dollars per
    device-hour. ``bid_micros`` is for ``interruptible`` only (None: each host's minimum)."""

    tier: str = Field(default="on_demand", pattern=r"^(on_demand|interruptible|reserved)$")
    bid_micros: int | None = Field(default=None, ge=0, le=MAX_PRICE_MICROS)
    max_price_micros: int | None = Field(default=None, ge=0, le=MAX_PRICE_MICROS)
    region: HostLabel | None = None  # as hosts name theirs
    min_reliability_ppm: int = Field(default=0, ge=0, le=1_000_000)
    prefer: str = Field(default="cheapest", pattern=r"^(cheapest|greenest|fastest)$")
    # Only hosts at or below this carbon intensity (gCO2/kWh); hosts that declare none are
    # refused under a cap. None: no cap.
    max_carbon_g_per_kwh: int | None = Field(default=None, ge=0, le=5000)
    # Run only on hosts the exchange verified (their self-test matched the GPU catalog).
    verified: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> MarketTerms:
        if self.bid_micros is not None and self.tier != "interruptible":
            raise ValueError(f"a bid is for tier='interruptible'; tier={self.tier!r} pays the ask")
        if (
            self.bid_micros is not None
            and self.max_price_micros is not None
            and self.bid_micros > self.max_price_micros
        ):
            raise ValueError("the bid is above max_price; raise max_price or lower the bid")
        return self


class FunctionCreate(Named):
    code: CodeRef
    resources: Resources = Field(default_factory=Resources)
    timeout_s: float = Field(default=300.0, gt=0, le=7 * 86400)
    retries: RetryPolicy = Field(default_factory=RetryPolicy)
    max_containers: int | None = Field(default=None, ge=1, le=100_000)
    # Inputs one container handles at once (@crucible.concurrent), and how many the
    # autoscaler aims for per container (default: max_inputs).
    max_inputs: int = Field(default=1, ge=1, le=1000)
    target_inputs: int | None = Field(default=None, ge=1, le=1000)
    # A web endpoint: {"kind": "fastapi_endpoint"|"asgi_app", "method", "public"}.
    web: dict[str, JsonValue] | None = None
    # An @app.cls() pool: the class's parameters (each input names the method to call).
    class_params: dict[str, JsonValue] | None = None
    # An @app.cls() pool: its class's parameters and methods (protocol/classes.py), for
    # clients and the server to make the pools of other parameter sets.
    class_spec: ClassSpec | None = None
    # @crucible.batched: inputs per call of the function, and how long to wait for them.
    max_batch_size: int = Field(default=1, ge=1, le=1000)
    batch_wait_ms: int = Field(default=0, ge=0, le=10_000)
    # Kept warm even with no work (billed while they run).
    min_containers: int = Field(default=0, ge=0, le=100_000)
    # Idle containers kept on top of what the load needs, for bursts.
    buffer_containers: int = Field(default=0, ge=0, le=100_000)
    scaledown_window_s: float | None = Field(default=None, ge=0, le=86400)
    is_async: bool = False
    is_generator: bool = False  # its calls stream what it yields (.remote_gen())
    # The environment its containers run in (None: the host's own Python environment), and
    # what a sandboxed container may reach on the network: False (nothing), True (every public
    # IPv4 address) or an allowlist of "HOST:PORT" targets (protocol/egress.py).
    image: ImageSpec | None = None
    network: NetworkAsk = False
    market: MarketTerms = Field(default_factory=MarketTerms)
    # Names of the account's secrets whose values become environment variables of its
    # containers (later names win on a shared key); never the values themselves.
    secrets: list[str] = Field(default_factory=list, max_length=32)
    # Runs by itself on a deployed app (ignored by ephemeral runs).
    schedule: ScheduleSpec | None = None
    # Volumes of the account mounted into its containers: mount path -> volume name.
    volumes: dict[str, str] = Field(default_factory=dict, max_length=16)

    @field_validator("volumes")
    @classmethod
    def _mounts(cls, volumes: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for path, name in volumes.items():
            if not SECRET_NAME.match(name):
                raise ValueError(f"volume name {name[:80]!r} is not valid")
            norm = check_mount_path(path)
            if any(norm == o or norm.startswith(o + "/") or o.startswith(norm + "/") for o in out):
                raise ValueError(f"mount path {norm!r} overlaps another volume's")
            out[norm] = name
        return out

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not SECRET_NAME.match(name):
                raise ValueError(f"secret name {name[:80]!r} is not valid")
        return names

    @model_validator(mode="after")
    def _scaling_bounds(self) -> FunctionCreate:
        if self.target_inputs is not None and self.target_inputs > self.max_inputs:
            raise ValueError(
                f"target_inputs={self.target_inputs} is above max_inputs={self.max_inputs}"
            )
        if self.class_spec is not None and self.class_params is None:
            raise ValueError("class_spec is for an @app.cls() pool: it needs class_params")
        if self.max_containers is not None and self.min_containers > self.max_containers:
            raise ValueError(
                f"min_containers={self.min_containers} is above "
                f"max_containers={self.max_containers}"
            )
        return self

    def keeps_warm(self) -> bool:
        """Whether its containers run without work (min or buffer containers). Never for the
        deployed function of a class with required parameters (its ``class_params`` lack
        them): only the pools made from it can make an instance."""
        spec, given = self.class_spec, self.class_params
        if (
            spec is not None
            and given is not None
            and any(p.required and p.name not in given for p in spec.params)
        ):
            return False
        return self.min_containers > 0 or self.buffer_containers > 0


FUNCTION_KINDS = ("function", "generator", "batched", "concurrent", "class", "web_endpoint")


def function_kind(spec: FunctionCreate) -> str:
    """What a function is, which decides how it is called: ``web_endpoint`` (over HTTP
    through the gateway), ``class`` (an ``@app.cls()`` pool: each input names a method),
    ``generator`` (``.remote_gen()``), ``batched``, ``concurrent`` or a plain ``function``."""
    if spec.web is not None:
        return "web_endpoint"
    if spec.class_params is not None:
        return "class"
    if spec.is_generator:
        return "generator"
    if spec.max_batch_size > 1:
        return "batched"
    if spec.max_inputs > 1:
        return "concurrent"
    return "function"


class FunctionInfo(FunctionCreate):
    id: str
    app_id: str
    created_ms: WireInt
    # A web endpoint's URL: its own host with CRUCIBLE_PORTS_DOMAIN set, else its path on the
    # exchange (filled where the server knows the request's origin; "" elsewhere).
    web_url: str = ""
    # Derived from the spec (see function_kind) whenever the model is built: never trusted
    # from input, so every handle on the function, however it was found, agrees on it.
    kind: str = "function"

    @model_validator(mode="after")
    def _derive_kind(self) -> FunctionInfo:
        self.kind = function_kind(self)
        return self
