"""Scenario files: the fleet and the workload of one simulation, in TOML.

:func:`load_scenario` reads a file, :func:`parse_scenario` a string; both validate everything
and raise :class:`ScenarioError` naming the file, the key and what to write instead. The
format is documented in ``docs/simulator.md``; ``examples/sim/`` holds working files.

Two kinds:

* ``kind = "placement"``: the placement core (:class:`~crucible.core.placement.
  Cluster`) places tasks with a policy; the workload is the openb trace replayed as recorded
  (``[workload] source = "openb"``) or synthetic task classes (``[[workload.classes]]``),
  which may be gangs (``nodes > 1``, all or nothing).
* ``kind = "market"``: the market core (:class:`~crucible.core.market.Market`) leases
  whole GPUs to on-demand and interruptible demand (synthetic classes), with preemptions.

The fleet is a list of providers (``[[fleet]]``): either the openb node list (``source =
"openb"``, optionally replicated to ``gpus``) or generated hosts (``gpus /
gpus_per_host`` hosts over ``sites``) with a model mix and prices per GPU-hour in dollars.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crucible.core.placement import MAX_NODE_CPU_MILLI, MAX_NODE_MEMORY_MIB, POLICIES
from crucible.errors import InvalidRequestError

__all__ = [
    "PAI_INSTANCES",
    "TRACE_FORMATS",
    "ClassSpec",
    "ProviderSpec",
    "Scenario",
    "ScenarioError",
    "TaskTrace",
    "TraceWorkload",
    "load_scenario",
    "parse_scenario",
]

KINDS = ("placement", "market")
TIERS = ("on_demand", "interruptible")
MARKET_POLICIES = (
    "cost-first",
    "carbon-first",
    "green-interruptible",
    "green-capped-interruptible",
    "carbon-capped",
    "reserve-price",
)
"""Policies a market scenario accepts: the renters' preference. ``cost-first``: the cheapest
offer; ``carbon-first``: the greenest; ``green-interruptible``: on-demand work the cheapest,
interruptible work the greenest (it follows green capacity); ``green-capped-interruptible``:
the same, and interruptible work runs only on hosts at or below 300 gCO2/kWh (it waits for
green capacity); ``carbon-capped``: the greenest
offer at or below the mean ask of the job's first model (a price cap); ``reserve-price``:
cost-first, and interruptible work pays each host's posted minimum (its reserve price)
instead of its own bid."""


TRACE_FORMATS = ("generic", "openb", "pai")
"""Trace layouts a ``source = "trace"`` workload or a ``source = "nodes"`` provider reads:
the generic format (:mod:`crucible.sim.trace_format`), openb's pod and node lists, and
Alibaba PAI 2020's task table and machine spec (:mod:`crucible.sim.trace_pai`)."""
PAI_INSTANCES = ("independent", "gang")
"""How a PAI task's ``inst_num`` instances replay (``instances``): ``independent``, each a
task of its own arriving with the task, placed anywhere (several may share a machine), as
the trace's instance table records them (each instance its own machine, start and end);
``gang``: all at once on distinct machines, or none."""
# Durations and patience at most 10 years of simulated time: a market run is an event per
# arrival, so a longer one would run for days; a trace replay may span more (its own times).
MAX_HOURS = 87_600.0
# A fleet the simulator can hold in memory (it is sized for about 250,000 GPUs; a node of
# more GPUs than any machine has, or billions in all, is a typo that would exhaust memory).
MAX_FLEET_GPUS = 2_000_000
MAX_GPUS_PER_NODE = 1_024
MAX_SITES = 100_000


class ScenarioError(InvalidRequestError):
    """A scenario file that cannot be run: the message names the file, the key and the fix."""


@dataclass(frozen=True)
class ProviderSpec:
    """One seller of GPUs. Prices are dollars per GPU-hour (on-demand reference by model)."""

    name: str
    source: str = "generated"  # "generated", "openb" or "nodes" (a node file)
    gpus: int = 0  # generated: GPUs in all; openb: replicate the node list to this (0: as is)
    sites: int = 1
    gpus_per_host: int = 8
    cpu_per_host: int = 96  # cores of a generated host (the placement kind uses them)
    memory_gib_per_host: int = 1024
    mix: Mapping[str, float] = field(default_factory=dict)  # model -> share of hosts
    prices: Mapping[str, float] = field(default_factory=dict)  # model -> on-demand $/GPU-h
    price_jitter: float = 0.0  # each host's ask is price x uniform(1 - j, 1 + j)
    interruptible_min: float = 0.5  # minimum bid as a fraction of the host's ask
    reserved: float = 0.8  # reserved price as a fraction of the ask
    reliability: float = 0.99
    carbon_g_per_kwh: tuple[int, int] | None = None  # (low, high) across sites; None: undeclared
    energy_source: str = "grid"
    trace_dir: str = ""  # openb: the trace folder ("": the CRUCIBLE_OPENB_TRACE_DIR setting)
    path: str = ""  # nodes: the node file (relative to the scenario file's folder)
    format: str = "generic"  # nodes: its layout, one of TRACE_FORMATS


@dataclass(frozen=True)
class ClassSpec:
    """A synthetic task class: Poisson arrivals offering ``load`` (a fraction of the fleet's
    GPUs, on average) of ``gpus`` GPUs per node on ``nodes`` nodes for exponential durations
    of mean ``duration_hours``."""

    name: str
    load: float
    gpus: tuple[int, ...] = (1,)
    nodes: tuple[int, ...] = (1,)
    gpu_milli: int = 1000  # placement: a share of one GPU when < 1000 (gpus must be 1)
    cpu: int = 4  # cores per node (placement)
    memory_gib: int = 16  # per node (placement)
    models: tuple[str, ...] = ()  # alternatives in fallback order; empty: any (placement)
    duration_hours: float = 1.0
    patience_hours: float = 24.0  # how long a request waits or retries before it gives up
    tier: str = "on_demand"  # market
    bid: tuple[float, float] | None = None  # interruptible: bid as a fraction of the ref price

    @property
    def mean_gpus(self) -> float:
        per_node = sum(self.gpus) / len(self.gpus)
        if self.gpu_milli < 1000:
            per_node = self.gpu_milli / 1000
        return per_node * sum(self.nodes) / len(self.nodes)


@dataclass(frozen=True)
class TraceWorkload:
    """The openb pod list ``openb_pod_list_<pods>.csv``: replayed as recorded (arrival at its
    creation time, departure at its deletion time; copied once per fleet replica when
    ``scale_with_fleet``), or with ``replay = "inflate"`` sampled FGD's way (see
    :class:`~crucible.sim.workload.InflateSource`)."""

    pods: str = "default"
    trace_dir: str = ""
    scale_with_fleet: bool = True
    replay: str = "recorded"  # or "inflate": FGD's arrivals-only experiment
    inflate_to: float = 1.3  # inflate: stop once the demand that arrived is this x the GPUs


@dataclass(frozen=True)
class TaskTrace:
    """A task trace file replayed as recorded: ``path`` (relative to the scenario file's
    folder) in ``format``; tasks without their own patience give up after
    ``patience_hours``."""

    path: str
    format: str = "generic"
    patience_hours: float = 24.0
    instances: str = "independent"  # PAI: a task's instances, one of PAI_INSTANCES


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str
    providers: tuple[ProviderSpec, ...]
    classes: tuple[ClassSpec, ...] = ()
    trace: TraceWorkload | None = None
    tasks: TaskTrace | None = None
    duration_hours: float = 0.0  # 0: until the workload is done (placement kind only)
    sample_minutes: float = 60.0
    seed: int = 1
    policy: str = "best-fit"
    gpus: int = 0  # scale generated providers so the fleet holds about this many GPUs
    platform_fee: float = 0.10
    grace_seconds: float = 30.0
    default_carbon_g_per_kwh: int = 400  # carbon accounting for hosts that declare none
    power_watts: Mapping[str, int] = field(default_factory=dict)  # per GPU, by model
    source: str = "<string>"
    base_dir: str = ""  # relative trace and node paths are read from here ("": the cwd)

    def resolve(self, path: str) -> Path:
        """A path the scenario names, relative to the scenario file's folder."""
        p = Path(path).expanduser()
        p = p if p.is_absolute() or not self.base_dir else Path(self.base_dir) / p
        if p.exists() and not p.is_file():  # a folder, or a device such as /dev/zero
            raise ScenarioError(f"{p}: not a file (a trace is a CSV or Parquet file)")
        return p


# ---------------------------------------------------------------------------- parsing


class _Reader:
    """Typed access to one TOML table; every error names ``where`` and the key."""

    def __init__(
        self, data: Mapping[str, Any], where: str, source: str, known: tuple[str, ...]
    ) -> None:
        self.data, self.where, self.source = data, where, source
        self.used: set[str] = set()
        extra = sorted(set(data) - set(known))
        if extra:  # a misspelt key first: it is usually why a required one is "missing"
            raise self.fail(extra[0], f"is not a known key; known here: {', '.join(sorted(known))}")

    def fail(self, key: str, problem: str) -> ScenarioError:
        at = f"{self.where}.{key}" if self.where else key
        return ScenarioError(f"{self.source}: {at}: {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is None:
                raise self.fail(key, "is required")
            return default
        v = self.data[key]
        if isinstance(v, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(key, f"must be {_kind_name(kind)}, not {v!r}")
        if not isinstance(v, kind):
            raise self.fail(key, f"must be {_kind_name(kind)}, not {v!r}")
        return v

    def number(
        self, key: str, default: float | None, lo: float = 0.0, hi: float | None = None
    ) -> float:
        v = float(self.get(key, (int, float), default))
        rng = f">= {lo}" if hi is None else f"within {lo}..{hi}"
        if not math.isfinite(v):  # NaN passes every comparison; inf every lower bound
            raise self.fail(key, f"must be a finite number {rng}, not {v}")
        if v < lo or (hi is not None and v > hi):
            raise self.fail(key, f"must be {rng}, not {v}")
        return v

    def integer(self, key: str, default: int, lo: int = 0, hi: int | None = None) -> int:
        v = int(self.get(key, int, default))
        if v < lo or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"within {lo:,}..{hi:,}"
            raise self.fail(key, f"must be {rng}, not {v:,}")
        return v

    def ints(self, key: str, default: tuple[int, ...]) -> tuple[int, ...]:
        v = self.get(key, (list, int), list(default))
        v = [v] if isinstance(v, int) else v
        if not v or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v):
            raise self.fail(key, f"must be a list of whole numbers >= 1, not {v!r}")
        return tuple(v)

    def strs(self, key: str) -> tuple[str, ...]:
        v = self.get(key, list, [])
        if not all(isinstance(x, str) and x for x in v):
            raise self.fail(key, f"must be a list of names, not {v!r}")
        return tuple(v)

    def pair(self, key: str, lo: float, hi: float) -> tuple[float, float] | None:
        if key not in self.data:
            self.used.add(key)
            return None
        v = self.get(key, list)
        if (
            len(v) != 2
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
            or not lo <= v[0] <= v[1] <= hi
        ):
            raise self.fail(key, f"must be [low, high] with {lo} <= low <= high <= {hi}")
        return (float(v[0]), float(v[1]))

    def table(self, key: str) -> dict[str, float]:
        v = self.get(key, dict, {})
        for k, x in v.items():
            if (
                isinstance(x, bool)
                or not isinstance(x, int | float)
                or not math.isfinite(x)
                or x < 0
            ):
                raise self.fail(f"{key}.{k}", f"must be a finite number >= 0, not {x!r}")
        return {k: float(x) for k, x in v.items()}


_TOP_KEYS = (
    "name", "kind", "fleet", "workload", "duration_hours", "sample_minutes", "seed", "policy",
    "gpus", "platform_fee", "grace_seconds", "default_carbon_g_per_kwh", "power_watts",
)  # fmt: skip
_PROVIDER_KEYS = tuple(f for f in ProviderSpec.__dataclass_fields__)
_CLASS_KEYS = tuple(f for f in ClassSpec.__dataclass_fields__)
_WORKLOAD_KEYS = (
    "source", "classes", *TraceWorkload.__dataclass_fields__,
    *(k for k in TaskTrace.__dataclass_fields__ if k not in TraceWorkload.__dataclass_fields__),
)  # fmt: skip


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}
    names |= {list: "a list", dict: "a table"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if set(kinds) == {int, float}:
        return "a number"
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _provider(data: Any, i: int, source: str) -> ProviderSpec:
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: fleet[{i}] must be a table ([[fleet]])")
    r = _Reader(data, f"fleet[{i}]", source, _PROVIDER_KEYS)
    name = r.get("name", str)
    src = r.get("source", str, "generated")
    if src not in ("generated", "openb", "nodes"):
        raise r.fail("source", f"must be 'generated', 'openb' or 'nodes', not {src!r}")
    mix = r.table("mix")
    prices = r.table("prices")
    carbon = r.pair("carbon_g_per_kwh", 0, 5000)
    p = ProviderSpec(
        name=name,
        source=src,
        gpus=r.integer("gpus", 0, hi=MAX_FLEET_GPUS),
        sites=r.integer("sites", 1, lo=1, hi=MAX_SITES),
        gpus_per_host=r.integer("gpus_per_host", 8, lo=1, hi=MAX_GPUS_PER_NODE),
        cpu_per_host=r.integer("cpu_per_host", 96, lo=1, hi=MAX_NODE_CPU_MILLI // 1000),
        memory_gib_per_host=r.integer(
            "memory_gib_per_host", 1024, lo=1, hi=MAX_NODE_MEMORY_MIB // 1024
        ),
        mix=mix,
        prices=prices,
        price_jitter=r.number("price_jitter", 0.0, 0.0, 0.9),
        interruptible_min=r.number("interruptible_min", 0.5, 0.0, 10.0),
        reserved=r.number("reserved", 0.8, 0.0, 10.0),
        reliability=r.number("reliability", 0.99, 0.0, 1.0),
        carbon_g_per_kwh=None if carbon is None else (int(carbon[0]), int(carbon[1])),
        energy_source=r.get("energy_source", str, "grid"),
        trace_dir=r.get("trace_dir", str, ""),
        path=r.get("path", str, ""),
        format=r.get("format", str, "generic"),
    )
    if p.format not in TRACE_FORMATS:
        raise r.fail("format", f"must be one of {list(TRACE_FORMATS)}, not {p.format!r}")
    if src == "nodes" and not p.path:
        raise r.fail("path", "a 'nodes' provider names its node file, e.g. path = 'nodes.csv'")
    if src != "nodes" and (p.path or "format" in data):
        raise r.fail("path" if p.path else "format", "is for source = 'nodes'")
    if src == "generated":
        if p.gpus < 1:
            raise r.fail("gpus", "a generated provider needs gpus >= 1")
        if not mix:
            raise r.fail("mix", "name the GPU models and their shares, e.g. {H100 = 1.0}")
        if sum(mix.values()) <= 0:
            raise r.fail("mix", "shares must add up to more than 0")
        missing = sorted(set(mix) - set(prices))
        if missing:
            raise r.fail("prices", f"no price for {missing}; give each model in mix a price")
    return p


def _class(data: Any, i: int, kind: str, source: str) -> ClassSpec:
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: workload.classes[{i}] must be a table")
    r = _Reader(data, f"workload.classes[{i}]", source, _CLASS_KEYS)
    tier = r.get("tier", str, "on_demand")
    if tier not in TIERS:
        raise r.fail("tier", f"must be one of {list(TIERS)}, not {tier!r}")
    c = ClassSpec(
        name=r.get("name", str),
        load=r.number("load", None, 0.0, 10.0),
        gpus=r.ints("gpus", (1,)),
        nodes=r.ints("nodes", (1,)),
        gpu_milli=r.integer("gpu_milli", 1000, lo=1),
        cpu=r.integer("cpu", 4),
        memory_gib=r.integer("memory_gib", 16),
        models=r.strs("models"),
        duration_hours=r.number("duration_hours", 1.0, 1e-6, MAX_HOURS),
        patience_hours=r.number("patience_hours", 24.0, 0.0, MAX_HOURS),
        tier=tier,
        bid=r.pair("bid", 0.0, 10.0),
    )
    if c.gpu_milli > 1000:
        raise r.fail("gpu_milli", "is a share of one GPU: 1..1000")
    if c.gpu_milli < 1000 and c.gpus != (1,):
        raise r.fail("gpu_milli", "a GPU share (gpu_milli < 1000) needs gpus = [1]")
    if kind == "market":
        if not c.models:
            raise r.fail("models", "a market request names the GPU models it accepts")
        if c.gpu_milli < 1000:
            raise r.fail("gpu_milli", "the market leases whole GPUs; use the placement kind")
        if c.bid is not None and tier != "interruptible":
            raise r.fail("bid", "a bid is for tier = 'interruptible'")
    return c


def parse_scenario(text: str, source: str = "<string>", base_dir: str = "") -> Scenario:
    """The scenario in ``text`` (TOML), validated. ``source`` names it in errors; relative
    trace and node paths are read from ``base_dir`` (default: the working directory)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from None
    r = _Reader(data, "", source, _TOP_KEYS)
    kind = r.get("kind", str)
    if kind not in KINDS:
        raise r.fail("kind", f"must be one of {list(KINDS)}, not {kind!r}")
    fleet = r.get("fleet", list)
    if not fleet:
        raise r.fail("fleet", "needs at least one [[fleet]] provider")
    providers = tuple(_provider(p, i, source) for i, p in enumerate(fleet))
    if len({p.name for p in providers}) != len(providers):
        raise r.fail("fleet", "provider names must be distinct")
    workload = r.get("workload", dict)
    w = _Reader(workload, "workload", source, _WORKLOAD_KEYS)
    trace: TraceWorkload | None = None
    tasks: TaskTrace | None = None
    wsrc = w.get("source", str, "classes")
    if wsrc == "openb":
        if kind != "placement":
            raise w.fail("source", "the openb trace drives the placement kind only")
        trace = TraceWorkload(
            pods=w.get("pods", str, "default"),
            trace_dir=w.get("trace_dir", str, ""),
            scale_with_fleet=w.get("scale_with_fleet", bool, True),
            replay=w.get("replay", str, "recorded"),
            inflate_to=w.number("inflate_to", 1.3, 0.01, 100.0),
        )
        if trace.replay not in ("recorded", "inflate"):
            raise w.fail("replay", f"must be 'recorded' or 'inflate', not {trace.replay!r}")
        classes: tuple[ClassSpec, ...] = ()
    elif wsrc == "classes":
        raw = w.get("classes", list)
        if not raw:
            raise w.fail("classes", "needs at least one [[workload.classes]] table")
        classes = tuple(_class(c, i, kind, source) for i, c in enumerate(raw))
    elif wsrc == "trace":
        if kind != "placement":
            raise w.fail("source", "a task trace drives the placement kind only")
        tasks = TaskTrace(
            path=w.get("path", str),
            format=w.get("format", str, "generic"),
            patience_hours=w.number("patience_hours", 24.0, 0.0, MAX_HOURS),
            instances=w.get("instances", str, "independent"),
        )
        if tasks.format not in TRACE_FORMATS:
            raise w.fail("format", f"must be one of {list(TRACE_FORMATS)}, not {tasks.format!r}")
        if "instances" in workload and tasks.format != "pai":
            raise w.fail(
                "instances",
                "is for format = 'pai' (a generic trace's 'nodes' column is always a gang)",
            )
        if tasks.instances not in PAI_INSTANCES:
            raise w.fail(
                "instances", f"must be one of {list(PAI_INSTANCES)}, not {tasks.instances!r}"
            )
        classes = ()
    else:
        raise w.fail("source", f"must be 'openb', 'trace' or 'classes', not {wsrc!r}")
    if wsrc != "trace":
        for key in ("path", "format", "patience_hours", "instances"):
            if key in workload:
                raise w.fail(key, "is for source = 'trace'")
    power = r.get("power_watts", dict, {})
    for k, v in power.items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise r.fail(f"power_watts.{k}", f"must be a whole number of watts > 0, not {v!r}")
    policy = r.get("policy", str, "best-fit" if kind == "placement" else "cost-first")
    s = Scenario(
        name=r.get("name", str),
        kind=kind,
        providers=providers,
        classes=classes,
        trace=trace,
        tasks=tasks,
        duration_hours=r.number("duration_hours", 0.0, 0.0, MAX_HOURS),
        sample_minutes=r.number("sample_minutes", 60.0, 1e-3, MAX_HOURS * 60),
        seed=r.integer("seed", 1),
        policy=policy,
        gpus=r.integer("gpus", 0, hi=MAX_FLEET_GPUS),
        platform_fee=r.number("platform_fee", 0.10, 0.0, 1.0),
        grace_seconds=r.number("grace_seconds", 30.0, 0.0, MAX_HOURS * 3600),
        default_carbon_g_per_kwh=r.integer("default_carbon_g_per_kwh", 400),
        power_watts=dict(power),
        source=source,
        base_dir=base_dir,
    )
    check_policy(s, s.policy)
    if kind == "market":
        if s.duration_hours <= 0:
            raise r.fail("duration_hours", "a market scenario needs a duration > 0 (e.g. 168)")
        if any(p.source != "generated" for p in providers):
            raise r.fail(
                "fleet",
                "the market kind needs generated providers (openb and node-file nodes have no "
                "prices)",
            )
    return s


def check_policy(s: Scenario, policy: str) -> None:
    """Raise :class:`ScenarioError` unless ``policy`` can drive ``s``."""
    allowed = sorted(POLICIES) if s.kind == "placement" else list(MARKET_POLICIES)
    if policy not in allowed:
        raise ScenarioError(
            f"{s.source}: policy {policy!r} cannot drive a {s.kind} scenario; use one of {allowed}"
        )


def load_scenario(path: Path | str) -> Scenario:
    """Read and validate a scenario file."""
    p = Path(path)
    if p.is_dir():
        raise ScenarioError(f"{p}: a directory, not a scenario file; give the .toml file in it")
    if not p.is_file():
        raise ScenarioError(f"{p}: no such scenario file (see examples/sim/ for working ones)")
    if p.suffix != ".toml":
        raise ScenarioError(f"{p}: a scenario is a .toml file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(
            f"{p}: not a UTF-8 text file ({exc.reason} at byte {exc.start})"
        ) from None
    return parse_scenario(text, str(p), str(p.parent))
