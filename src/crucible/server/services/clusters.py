"""Clusters: ``nodes`` pods placed all at once or not at all, and stopped as one.

A cluster's members are pods (``NAME-0`` … ``NAME-(n-1)``) whose functions the scheduler's
plan leaves alone: :func:`place_clusters` asks the market for one multi-node lease request
(every node on a different host, all granted in one decision or none), creates the members'
containers together and tells each member ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT`` and the members' addresses (``CRUCIBLE_CLUSTER_ADDRS``, by rank). Where every
chosen host measured that it builds cluster networks (``IsolationReport.cluster_network``),
those are the members' addresses on the cluster's private network (:func:`network_plans`),
else their hosts' announced addresses.
:func:`settle_clusters` stops the whole gang, with the grace of the member that ended
first (a preemption's grace), as soon as one member's container is stopping or gone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, insert, select, update

from crucible.core.leasing import NotLeased, lease_on_hosts
from crucible.core.market import LeaseGranted, Preemption
from crucible.core.scheduling import HostCapacity, LeaseTerms, StartContainer
from crucible.errors import ConflictError, InvalidRequestError, NotFoundError
from crucible.protocol.ids import new_id
from crucible.protocol.pods import (
    ClusterCreate,
    ClusterInfo,
    ClusterNetPlan,
    ClusterPeer,
    PodCreate,
    PodInfo,
    PodSpec,
    check_pod_name,
    parse_pod,
)
from crucible.server.auth import Principal
from crucible.server.services.containers import stop_for_market
from crucible.server.services.market import LiveMarket, MarketTerms
from crucible.server.services.pods import (
    current_container,
    delete_row,
    insert_pod,
    pod_info,
    pod_rows_of_cluster,
    require_builder,
    require_room,
    restart_row,
    settle_row,
    stop_row,
)
from crucible.server.services.volumes import volume_row
from crucible.server.store.locks import lock_row
from crucible.server.store.tables import accounts, clusters, hosts, pods

__all__ = [
    "ClusterPlacement",
    "cluster_function_ids",
    "create_cluster",
    "delete_cluster",
    "get_cluster",
    "has_active_clusters",
    "lease_gang",
    "list_clusters",
    "master_port",
    "network_plans",
    "place_clusters",
    "record_cluster_env",
    "settle_clusters",
    "start_cluster",
    "stop_cluster",
]

_LIVE = ("pending", "starting", "running")
_MASTER_PORT_BASE = 29500  # torch.distributed's customary port, then a spread per cluster
_MASTER_PORT_SPREAD = 2000


# Private networks: a /24 of 10.201.0.0/16 per cluster (each cluster's network is a world of
# its own, so two clusters sharing a /24 would still not meet), members at .2, .3, ... by
# rank; every unprivileged port between members (gloo and NCCL listen on ephemeral ports).
_NET_PREFIX = ipaddress.IPv4Network("10.201.0.0/16")
_NET_PORTS = (1024, 65535)
_NET_IFNAME = "cg0"  # a member's interface on it (agent/groupnet.py's GROUP_INTERFACE)


def _digest(cluster_id: str) -> int:
    return int.from_bytes(hashlib.sha256(b"net:" + cluster_id.encode()).digest()[:8], "big")


def network_plans(cluster_id: str, endpoints: list[tuple[str, int]]) -> list[ClusterNetPlan]:
    """Each member's place on the cluster's private network, by rank; ``endpoints``: where
    each member's host receives cluster traffic (its announced address and UDP port). Its
    subnet and VXLAN id are fixed by the cluster's id."""
    digest = _digest(cluster_id)
    subnet = ipaddress.IPv4Network((int(_NET_PREFIX.network_address) + (digest % 256 << 8), 24))
    vni = 1 + (digest >> 8) % ((1 << 24) - 1)
    plans = []
    for rank, own in enumerate(endpoints):
        peers = sorted({e for e in endpoints if e != own})
        plans.append(
            ClusterNetPlan(
                cluster_id=cluster_id,
                subnet=str(subnet),
                address=str(subnet.network_address + 2 + rank),
                vni=vni,
                port_lo=_NET_PORTS[0],
                port_hi=_NET_PORTS[1],
                peers=[ClusterPeer(address=a, port=p) for a, p in peers],
            )
        )
    return plans


def _net_port(isolation: Any) -> int | None:
    """The UDP port of a host's cluster networks, if it measured that it builds them."""
    if not isinstance(isolation, dict) or not isolation.get("cluster_network"):
        return None
    port = isolation.get("cluster_net_port")
    return port if isinstance(port, int) and 1 <= port <= 65535 else None


def master_port(cluster_id: str) -> int:
    """The rendezvous port of a cluster: fixed by its id, spread so that clusters sharing a
    host rarely pick the same port."""
    digest = hashlib.sha256(cluster_id.encode()).digest()
    return _MASTER_PORT_BASE + int.from_bytes(digest[:4], "big") % _MASTER_PORT_SPREAD


def create_cluster(
    conn: Connection, principal: Principal, req: ClusterCreate, now_ms: int
) -> ClusterInfo:
    """Create a cluster and its members; the scheduler places the gang on its next tick."""
    require_builder(principal)
    check_pod_name(req.name, "cluster")
    if len(req.name) > 60:
        raise InvalidRequestError(
            f"cluster name {req.name!r} is too long: members are NAME-RANK, at most 63 "
            "characters; use at most 60"
        )
    if req.gpu is None:
        raise InvalidRequestError(
            "a cluster is placed by the GPU market all at once: give --gpu, e.g. H100:8"
        )
    base = PodCreate.model_validate(req.model_dump(exclude={"nodes"}))
    specs = [
        parse_pod(base.model_copy(update={"name": f"{req.name}-{i}"})) for i in range(req.nodes)
    ]
    for name in specs[0].volumes.values():
        volume_row(conn, principal, name)
    # Held while the names and the quota are checked and the members written (as pods').
    lock_row(conn, accounts, accounts.c.id, principal.account_id)
    mine = clusters.c.account_id == principal.account_id
    if conn.execute(
        select(clusters.c.id).where(
            mine, clusters.c.name == req.name, clusters.c.state != "deleted"
        )
    ).first():
        raise ConflictError(
            f"you already have a cluster called {req.name!r}; pick another name, or remove it "
            f"first with `crucible cluster rm {req.name}`"
        )
    taken = conn.execute(
        select(pods.c.name).where(
            pods.c.account_id == principal.account_id,
            pods.c.name.in_([s.name for s in specs]),
            pods.c.state != "deleted",
        )
    ).first()
    if taken is not None:
        raise ConflictError(
            f"you already have a pod called {taken.name!r}, a name this cluster's members "
            "need; pick another cluster name"
        )
    require_room(conn, principal.account_id, len(specs))
    cluster_id = new_id("cl")
    conn.execute(
        insert(clusters).values(
            id=cluster_id,
            account_id=principal.account_id,
            name=req.name,
            nodes=req.nodes,
            state="active",
            created_ms=now_ms,
            run_started_ms=now_ms,
        )
    )
    for rank, spec in enumerate(specs):
        insert_pod(conn, principal.account_id, spec, now_ms, cluster_id=cluster_id, rank=rank)
    return get_cluster(conn, principal, cluster_id)


def _cluster_row(conn: Connection, principal: Principal, ref: str, *, deleted: bool = False) -> Any:
    mine = clusters.c.account_id == principal.account_id
    row = conn.execute(select(clusters).where(mine, clusters.c.id == ref)).first()
    if row is None:
        row = conn.execute(
            select(clusters)
            .where(mine, clusters.c.name == ref, clusters.c.state != "deleted")
            .order_by(clusters.c.created_ms.desc())
        ).first()
    if row is None and deleted:
        row = conn.execute(
            select(clusters)
            .where(mine, clusters.c.name == ref)
            .order_by(clusters.c.created_ms.desc())
        ).first()
    if row is None or (row.state == "deleted" and not deleted):
        raise NotFoundError(
            f"no cluster {ref[:80]!r} in your account; `crucible cluster list` shows them"
        )
    return row


def _state(row: Any, members: list[PodInfo]) -> str:
    if row.state == "deleted":
        return "deleted"
    states = {m.state for m in members}
    if len(states) == 1:
        return states.pop()
    if "stopping" in states:
        return "stopping"
    for final in ("failed", "preempted"):
        if final in states and states <= {"stopped", "preempted", "failed"}:
            return final
    if states <= {"stopped", "preempted", "failed"}:
        return "stopped"
    if states & {"pending", "pulling"} and not states & {"running", "starting"}:
        return "pending"
    return "starting"


def _info(
    conn: Connection, row: Any, waiting: dict[str, str] | None = None, now_ms: int | None = None
) -> ClusterInfo:
    members = [pod_info(conn, r, waiting, now_ms) for r in pod_rows_of_cluster(conn, row.id)]
    state = _state(row, members)
    reason = row.reason
    if reason is None and state == "pending":
        reason = next((m.reason for m in members if m.reason), None)
    return ClusterInfo(
        id=row.id,
        name=row.name,
        nodes=row.nodes,
        state=state,
        reason=reason,
        gpu=members[0].gpu if members else None,
        master_addr=members[0].address if members else None,
        master_port=master_port(row.id),
        cost_micros=sum(m.cost_micros for m in members),
        created_ms=row.created_ms,
        members=members,
    )


def get_cluster(
    conn: Connection,
    principal: Principal,
    ref: str,
    waiting: dict[str, str] | None = None,
    now_ms: int | None = None,
) -> ClusterInfo:
    require_builder(principal)
    return _info(conn, _cluster_row(conn, principal, ref), waiting, now_ms)


def list_clusters(
    conn: Connection,
    principal: Principal,
    waiting: dict[str, str] | None = None,
    now_ms: int | None = None,
) -> list[ClusterInfo]:
    require_builder(principal)
    rows = conn.execute(
        select(clusters)
        .where(clusters.c.account_id == principal.account_id, clusters.c.state != "deleted")
        .order_by(clusters.c.created_ms.desc(), clusters.c.id.desc())
    ).all()
    return [_info(conn, r, waiting, now_ms) for r in rows]


def stop_cluster(
    conn: Connection, principal: Principal, ref: str, now_ms: int
) -> tuple[ClusterInfo, list[str]]:
    """Stop every member (SIGTERM, the grace, SIGKILL). Their disks stay on their hosts."""
    require_builder(principal)
    row = _cluster_row(conn, principal, ref)
    keys: list[str] = []
    if row.state == "active":
        conn.execute(
            update(clusters)
            .where(clusters.c.id == row.id)
            .values(state="stopped", reason="stopped by you", stopped_ms=now_ms)
        )
        for member in pod_rows_of_cluster(conn, row.id):
            keys += stop_row(conn, member, now_ms)
    return get_cluster(conn, principal, row.id), keys


def start_cluster(
    conn: Connection, principal: Principal, ref: str, now_ms: int
) -> tuple[ClusterInfo, list[str]]:
    """Ask the market again for the whole gang. Every member must have stopped first."""
    require_builder(principal)
    row = _cluster_row(conn, principal, ref, deleted=True)
    if row.state == "deleted":
        raise ConflictError(
            f"cluster {row.name!r} was deleted; create a new one with `crucible cluster create`"
        )
    for member in pod_rows_of_cluster(conn, row.id):
        # containers that ended since the last tick
        settle_row(conn, member, now_ms, current_container(conn, member))
    members = pod_rows_of_cluster(conn, row.id)
    if row.state == "active" and all(m.state == "active" for m in members):
        return get_cluster(conn, principal, row.id), []
    if any(m.state in ("active", "stopping") for m in members):
        raise ConflictError(
            f"cluster {row.name!r} is still stopping; start it again once `crucible cluster "
            "show` says every member stopped"
        )
    conn.execute(
        update(clusters)
        .where(clusters.c.id == row.id)
        .values(state="active", reason=None, run_started_ms=now_ms, stopped_ms=None)
    )
    for member in members:
        restart_row(conn, member, now_ms)
    return get_cluster(conn, principal, row.id), []


def delete_cluster(conn: Connection, principal: Principal, ref: str, now_ms: int) -> list[str]:
    require_builder(principal)
    row = _cluster_row(conn, principal, ref)
    keys: list[str] = []
    for member in pod_rows_of_cluster(conn, row.id):
        if member.state != "deleted":
            keys += delete_row(conn, member, now_ms)
    conn.execute(
        update(clusters)
        .where(clusters.c.id == row.id)
        .values(state="deleted", reason="deleted by you", stopped_ms=now_ms)
    )
    return keys


def has_active_clusters(conn: Connection) -> bool:
    """Whether any cluster is active (its gang may wait for :func:`place_clusters`)."""
    found = conn.execute(select(clusters.c.id).where(clusters.c.state == "active").limit(1))
    return found.first() is not None


# Through the clusters' ids, not ``cluster_id IS NOT NULL``: SQLite reads that by scanning
# every pod (each tick), and this through the index on cluster_id.
_MEMBER_FUNCTIONS = select(pods.c.function_id).where(pods.c.cluster_id.in_(select(clusters.c.id)))


def cluster_function_ids(conn: Connection) -> set[str]:
    """Functions of cluster members: placed by :func:`place_clusters`, not by the plan."""
    return set(conn.execute(_MEMBER_FUNCTIONS).scalars())


def settle_clusters(conn: Connection, now_ms: int) -> list[str]:
    """A gang lives and ends as one: once a member of an active cluster is stopping or gone
    (preempted, failed, its host lost), every other member is stopped with the same grace,
    and the cluster records why. Run before :func:`~crucible.server.services.pods.settle_pods`.
    """
    keys: list[str] = []
    for row in conn.execute(select(clusters).where(clusters.c.state == "active")).all():
        members = pod_rows_of_cluster(conn, row.id)
        cts = [current_container(conn, m) for m in members]
        ended = [
            (m, ct)
            for m, ct in zip(members, cts, strict=True)
            if ct is not None and ct.state not in _LIVE
        ]
        if not ended:
            continue
        first, first_ct = ended[0]
        why = first_ct.end_cause or first_ct.exit_reason or "stopped"
        grace = first_ct.stop_grace_ms
        conn.execute(
            update(clusters)
            .where(clusters.c.id == row.id)
            .values(
                state="stopped",
                reason=f"member {first.name} ended ({why}); a cluster stops as a whole",
                stopped_ms=now_ms,
            )
        )
        for ct in cts:
            if ct is not None and ct.state in _LIVE:
                keys += stop_for_market(conn, ct.id, now_ms, "gang", grace)
    return keys


@dataclass
class ClusterPlacement:
    """What :func:`place_clusters` decided in one tick."""

    starts: list[StartContainer] = field(default_factory=list)
    accounts: dict[str, str] = field(default_factory=dict)  # function id -> account
    preemptions: list[Preemption] = field(default_factory=list)
    env: dict[str, dict[str, str]] = field(default_factory=dict)  # pod id -> cluster env
    nets: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # pod id -> its plan
    waiting: dict[str, str] = field(default_factory=dict)  # function id -> why it waits


def lease_gang(
    live: LiveMarket,
    account_id: str,
    model: str,
    count: int,
    terms: MarketTerms,
    nodes: int,
    capacity: dict[str, HostCapacity],
    cpu: float,
    memory_mib: int,
    now_ms: int,
) -> LeaseGranted | NotLeased:
    """One market decision for a cluster's whole gang (``nodes`` leases of ``count``
    ``model`` GPUs, each on its own host that builds clusters' networks), through the lease
    path the simulator runs too (:func:`~crucible.core.leasing.lease_on_hosts`): no member
    on a host that lacks its CPU or memory, so the gang goes where all fit. Applied and
    charged to ``capacity`` (the live hosts by id) when granted. Hold the market's lock."""
    request = dataclasses.replace(
        live.request(account_id, model, count, terms, new_id("ct")), nodes=nodes, cluster=True
    )
    return lease_on_hosts(
        live.market, request, now_ms, hosts=capacity, cpu=cpu, memory_mib=memory_mib
    )


def place_clusters(
    conn: Connection, live: LiveMarket, capacity: list[HostCapacity], now_ms: int
) -> ClusterPlacement:
    """Place every active cluster whose members all wait: one market decision for the whole
    gang (each node on a different host), applied only when every node's host also has the
    CPU and memory. Hold the market's lock; ``capacity`` is updated for what is placed."""
    out = ClusterPlacement()
    by_id = {h.id: h for h in capacity}
    for row in conn.execute(select(clusters).where(clusters.c.state == "active")).all():
        members = pod_rows_of_cluster(conn, row.id)
        if not members or any(m.state != "active" for m in members):
            continue
        if any(current_container(conn, m) is not None for m in members):
            continue
        spec = PodSpec.model_validate(members[0].spec)  # read once, typed
        model, count = spec.gpu_model, spec.gpu_count
        if model is None:  # create_cluster refuses a cluster without --gpu
            continue
        outcome = lease_gang(
            live,
            row.account_id,
            model,
            count,
            MarketTerms.of(spec.market),
            len(members),
            by_id,
            spec.cpu,
            spec.memory_mib,
            now_ms,
        )
        if isinstance(outcome, NotLeased):
            for m in members:
                out.waiting[m.function_id] = f"the market: {outcome.message}"
            continue
        leases = list(outcome.leases)
        out.preemptions.extend(outcome.preemptions)
        # The gang's hosts only (a tick used to read every host's isolation report here).
        host_rows = conn.execute(
            select(hosts.c.id, hosts.c.address, hosts.c.isolation).where(
                hosts.c.id.in_({lease.host_id for lease in leases})
            )
        ).all()
        addresses = {r.id: r.address for r in host_rows}
        net_ports = {r.id: _net_port(r.isolation) for r in host_rows}
        addrs = [addresses.get(lease.host_id) or "" for lease in leases]
        ports = [net_ports.get(lease.host_id) for lease in leases]
        plans: list[ClusterNetPlan] | None = None
        if all(addrs) and all(p is not None for p in ports):
            plans = network_plans(row.id, [(a, p or 0) for a, p in zip(addrs, ports, strict=True)])
            addrs = [p.address for p in plans]
        port = master_port(row.id)
        for rank, (m, lease) in enumerate(zip(members, leases, strict=True)):
            out.accounts[m.function_id] = row.account_id
            out.starts.append(
                StartContainer(
                    function_id=m.function_id,
                    host_id=lease.host_id,
                    cpu=spec.cpu,
                    memory_mib=spec.memory_mib,
                    gpu_model=lease.device_type,
                    gpu_indices=lease.devices,
                    lease=LeaseTerms(
                        container_id=lease.lease_id,
                        tier=lease.tier.value,
                        unit_price_micros=lease.price_micros_per_device_hour,
                        rate_micros_per_hour=lease.rate_micros_per_hour,
                        reservation_id=lease.reservation_id,
                        start_after_ms=lease.start_ms,
                    ),
                )
            )
            out.env[m.id] = {
                "RANK": str(rank),
                "NODE_RANK": str(rank),
                "LOCAL_RANK": "0",
                "WORLD_SIZE": str(len(members)),
                "MASTER_ADDR": addrs[0],
                "MASTER_PORT": str(port),
                "CRUCIBLE_CLUSTER_ID": row.id,
                "CRUCIBLE_CLUSTER_NAME": row.name,
                "CRUCIBLE_CLUSTER_ADDRS": ",".join(addrs),
                "CRUCIBLE_ADDRESS": addrs[rank],
            }
            if plans is not None:
                # gloo and NCCL pick their interface by the host name otherwise, which does
                # not resolve in a sandbox (they fall back to loopback).
                out.env[m.id].update(
                    {"GLOO_SOCKET_IFNAME": _NET_IFNAME, "NCCL_SOCKET_IFNAME": _NET_IFNAME}
                )
            out.nets[m.id] = plans[rank].model_dump() if plans is not None else None
    return out


def record_cluster_env(
    conn: Connection,
    env: dict[str, dict[str, str]],
    nets: dict[str, dict[str, Any] | None] | None = None,
) -> None:
    """Keep what each placed member is told and its place on the cluster's network (the
    agent reads both with the assignment)."""
    for pod_id, values in env.items():
        net = (nets or {}).get(pod_id)
        conn.execute(
            update(pods).where(pods.c.id == pod_id).values(cluster_env=values, cluster_net=net)
        )
