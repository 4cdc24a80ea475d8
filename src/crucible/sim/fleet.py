"""The simulated fleet: the hosts a scenario's providers bring, and how each core sees them.

:func:`build_fleet` turns the ``[[fleet]]`` providers into :class:`Host` records (seeded:
price jitter and site carbon are drawn from the scenario's seed). :func:`to_nodes` gives the
placement core's :class:`~crucible.core.placement.NodeSpec` list and
:func:`add_to_market` registers the hosts and their offers with a
:class:`~crucible.core.market.Market`.

A generated provider spreads ``gpus / gpus_per_host`` hosts round-robin over its ``sites``
(one region per site, named ``<provider>-<site>``) and gives each host one model, in the
proportions of ``mix`` (largest remainder, so the mix is exact to one host). An ``openb``
provider takes the trace's node list (replicated to ``gpus`` when given) and spreads it over
its sites the same way; so does a ``nodes`` provider, from a node file in one of the trace
formats (the generic one, openb's node list or PAI 2020's machine spec).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from crucible.core.market import HostSpec, Market, Offer
from crucible.core.placement import NodeSpec
from crucible.settings import load_settings
from crucible.sim.scenario import (
    MAX_FLEET_GPUS,
    MAX_GPUS_PER_NODE,
    ProviderSpec,
    Scenario,
    ScenarioError,
)
from crucible.sim.trace import gpu_count, load_nodes, read_openb_nodes, replicate
from crucible.sim.trace_format import read_nodes
from crucible.sim.trace_pai import read_pai_nodes

__all__ = [
    "Host",
    "NodeLoader",
    "add_to_market",
    "build_fleet",
    "openb_dir",
    "read_node_file",
    "to_nodes",
]

NodeLoader = Callable[[Path], list[NodeSpec]]
"""Reads a trace's node list (the shell's I/O, injected so tests can hand nodes in)."""


@dataclass(frozen=True)
class Host:
    """One machine of the fleet. Prices are micro-dollars per GPU-hour."""

    id: str
    provider: str
    region: str
    model: str  # "" for a GPU-less node
    gpus: int
    cpu_milli: int
    memory_mib: int
    price_micros: int
    interruptible_min_micros: int
    reserved_micros: int
    reliability_ppm: int
    carbon_g_per_kwh: int | None
    energy_source: str


def openb_dir(configured: str) -> Path:
    """The trace folder a scenario names; ``""``: the ``CRUCIBLE_OPENB_TRACE_DIR`` setting.
    The trace is public but not shipped with Crucible: with neither, a clear error."""
    where = configured or load_settings().openb_trace_dir
    if not where:
        raise ScenarioError(
            'the openb scenarios replay Alibaba\'s GPU cluster trace 2023 ("openb", '
            "cluster-trace-gpu-v2023 in Alibaba's clusterdata repository), which Crucible "
            "does not ship: put its CSV files in a folder and set CRUCIBLE_OPENB_TRACE_DIR to "
            "it, or trace_dir in the scenario"
        )
    return Path(where).expanduser()


def read_node_file(path: Path, fmt: str) -> list[NodeSpec]:
    """The nodes of a node file in trace format ``fmt`` (see scenario.TRACE_FORMATS)."""
    if fmt == "pai":
        return read_pai_nodes(path)
    if fmt == "openb":
        try:
            return read_openb_nodes(path)
        except FileNotFoundError:
            raise ScenarioError(f"{path}: no such node file") from None
        except KeyError as exc:
            raise ScenarioError(f"{path}: not an openb node list (no column {exc})") from None
        except (ValueError, UnicodeDecodeError, IsADirectoryError) as exc:
            raise ScenarioError(f"{path}: not a readable openb node list ({exc})") from None
    return read_nodes(path)


def _site_carbon(p: ProviderSpec, rng: random.Random) -> list[int | None]:
    if p.carbon_g_per_kwh is None:
        return [None] * p.sites
    lo, hi = p.carbon_g_per_kwh
    return [round(rng.uniform(lo, hi)) for _ in range(p.sites)]


def _models_by_share(mix: dict[str, float], hosts: int) -> list[str]:
    """``hosts`` model names in the proportions of ``mix`` (largest remainder), interleaved."""
    total = sum(mix.values())
    names = sorted(mix)
    quotas = {m: mix[m] / total * hosts for m in names}
    counts = {m: int(quotas[m]) for m in names}
    rest = hosts - sum(counts.values())
    for m in sorted(names, key=lambda m: (-(quotas[m] - counts[m]), m))[:rest]:
        counts[m] += 1
    out: list[str] = []
    # interleave so every site gets the mix, not one model per site
    left = dict(counts)
    while len(out) < hosts:
        for m in names:
            if left[m]:
                out.append(m)
                left[m] -= 1
    return out


def _price(p: ProviderSpec, model: str, rng: random.Random) -> int:
    base = p.prices.get(model, 0.0)
    if p.price_jitter:
        base *= rng.uniform(1 - p.price_jitter, 1 + p.price_jitter)
    return round(base * 1_000_000)


def _host(
    p: ProviderSpec,
    hid: str,
    k: int,
    model: str,
    gpus: int,
    cpu: int,
    mem: int,
    carbon: list[int | None],
    rng: random.Random,
) -> Host:
    """Host ``k`` of provider ``p`` (its site is ``k % sites``)."""
    ask = _price(p, model, rng) if gpus else 0
    return Host(
        id=hid,
        provider=p.name,
        region=f"{p.name}-{k % p.sites:02d}",
        model=model,
        gpus=gpus,
        cpu_milli=cpu,
        memory_mib=mem,
        price_micros=ask,
        interruptible_min_micros=round(ask * p.interruptible_min),
        reserved_micros=round(ask * p.reserved),
        reliability_ppm=round(p.reliability * 1_000_000),
        carbon_g_per_kwh=carbon[k % p.sites],
        energy_source=p.energy_source,
    )


def build_fleet(
    s: Scenario, seed: int, load: NodeLoader = lambda d: load_nodes(d)
) -> tuple[list[Host], int]:
    """The fleet's hosts, and how many copies of the openb node list it holds (0: none)."""
    rng = random.Random(f"fleet:{seed}")
    generated = sum(p.gpus for p in s.providers if p.source == "generated")
    scale = s.gpus / generated if s.gpus and generated else 1.0
    hosts: list[Host] = []
    copies = 0
    total = 0
    for p in s.providers:
        carbon = _site_carbon(p, rng)

        if p.source in ("openb", "nodes"):
            if p.source == "nodes":
                nodes = read_node_file(s.resolve(p.path), p.format)
            else:
                where = openb_dir(p.trace_dir)
                try:
                    nodes = load(where)
                except FileNotFoundError:
                    raise ScenarioError(
                        f"{s.source}: fleet {p.name!r}: the openb trace is not in {where}; "
                        "put the data set there or set trace_dir"
                    ) from None
            big = next((n for n in nodes if n.gpu_count > MAX_GPUS_PER_NODE), None)
            if big is not None:
                raise ScenarioError(
                    f"{s.source}: fleet {p.name!r}: node {big.id!r} has {big.gpu_count:,} GPUs; "
                    f"a node holds at most {MAX_GPUS_PER_NODE:,}"
                )
            per = gpu_count(nodes)
            if p.gpus:
                nodes = replicate(nodes, p.gpus)
            copies = max(1, round(gpu_count(nodes) / per)) if per else 1
            total = _within_bound(s, total + gpu_count(nodes))
            for k, n in enumerate(nodes):
                hosts.append(
                    _host(
                        p, n.id, k, n.gpu_model, n.gpu_count, n.cpu_milli, n.memory_mib, carbon, rng
                    )
                )
            continue
        n_hosts = max(1, round(p.gpus * scale / p.gpus_per_host))
        total = _within_bound(s, total + n_hosts * p.gpus_per_host)
        for k, model in enumerate(_models_by_share(dict(p.mix), n_hosts)):
            hosts.append(
                _host(
                    p,
                    f"{p.name}-{k:06d}",
                    k,
                    model,
                    p.gpus_per_host,
                    p.cpu_per_host * 1000,
                    p.memory_gib_per_host * 1024,
                    carbon,
                    rng,
                )
            )
    return hosts, copies


def _within_bound(s: Scenario, total: int) -> int:
    """``total``, the fleet's GPUs so far, refused before its hosts are built when it is more
    than the simulator holds."""
    if total > MAX_FLEET_GPUS:
        raise ScenarioError(
            f"{s.source}: the fleet has {total:,} GPUs; the simulator holds at most "
            f"{MAX_FLEET_GPUS:,}: "
            + (
                "use fewer or smaller nodes (gpus only replicates a node list up)"
                if any(p.source != "generated" for p in s.providers)
                else "set the providers' gpus lower"
            )
        )
    return total


def to_nodes(hosts: Sequence[Host]) -> list[NodeSpec]:
    """The placement core's view: capacity, model, region, price and carbon."""
    return [
        NodeSpec(
            h.id,
            h.cpu_milli,
            h.memory_mib,
            h.gpus,
            h.model,
            h.region,
            h.price_micros,
            h.carbon_g_per_kwh,
        )
        for h in hosts
    ]


def add_to_market(market: Market, hosts: Sequence[Host]) -> None:
    """Register every GPU host with ``market`` and list its GPUs at its prices."""
    for h in hosts:
        if not h.gpus:
            continue  # the market scenario sells GPUs; CPU-only capacity is not simulated
        market.add_host(
            HostSpec(
                h.id,
                h.region,
                gpus=tuple((g, h.model) for g in range(h.gpus)),
                reliability_ppm=h.reliability_ppm,
                energy_source=h.energy_source,
                carbon_g_per_kwh=h.carbon_g_per_kwh,
            )
        )
        market.set_offer(
            h.id,
            h.model,
            Offer(h.price_micros, h.interruptible_min_micros, h.reserved_micros),
        )
