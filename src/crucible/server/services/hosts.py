"""Hosts: registration, the agent's sync, and losing a host."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, case, func, insert, or_, select, update

from crucible.errors import (
    IMAGE_ERROR_CODES,
    HostSupersededError,
    NotFoundError,
    PermissionDeniedError,
)
from crucible.protocol.common import GpuAsk, Resources
from crucible.protocol.containers import ContainerAssignment, ContainerReport
from crucible.protocol.hosts import (
    HostInfo,
    HostRegister,
    HostVerification,
    Inventory,
    IsolationReport,
    SelfTestResult,
)
from crucible.protocol.ids import new_id
from crucible.server.auth import Principal, container_token
from crucible.server.billing.service import meter_containers
from crucible.server.heartbeats import Heartbeats
from crucible.server.services import audit
from crucible.server.services.calls import fail_queued_calls, requeue_calls_of_container
from crucible.server.services.containers import request_stop
from crucible.server.services.function_specs import SPECS
from crucible.server.services.logs import add_exit_tail
from crucible.server.services.pods import pod_assignments, settle_pod_of
from crucible.server.store.bulk import execute_many
from crucible.server.store.locks import lock_row
from crucible.server.store.tables import accounts, containers, functions, hosts
from crucible.server.verification import verify

__all__ = [
    "LIVE_CONTAINER_STATES",
    "agent_session",
    "apply_self_test",
    "assignments_for_host",
    "end_container",
    "flush_heartbeats",
    "host_for_sync",
    "host_info",
    "list_hosts",
    "mark_lost_hosts",
    "oldest_ready_sync",
    "open_hosts_of",
    "process_reports",
    "register_host",
    "require_host",
    "sync_mark",
]

LIVE_CONTAINER_STATES = ("pending", "starting", "running", "stopping")


def _require_host_scope(principal: Principal) -> None:
    if principal.scope not in ("host", "admin"):
        raise PermissionDeniedError(
            "agents need a host token: `crucible token create --scope host`"
        )


# Parsed inventories by (host id, agent session): an inventory changes only when its agent
# registers, which starts a new session. Listing 1,600 hosts of 64 GPUs parsed 100,000
# device records per request.
_inventories: dict[tuple[str, int], Inventory] = {}
_INVENTORIES_MAX = 100_000


def _inventory(row: Any) -> Inventory:
    key = (row.id, row.agent_session)
    inv = _inventories.get(key)
    if inv is None:
        inv = Inventory.model_validate(row.inventory)
        if len(_inventories) >= _INVENTORIES_MAX:
            _inventories.clear()
        _inventories[key] = inv
    return inv


def host_info(row: Any, usage: dict[str, Any] | None = None) -> HostInfo:
    usage = usage or {}
    isolation = row.isolation
    verification = row.verification
    return HostInfo(
        id=row.id,
        name=row.name,
        region=row.region,
        state=row.state,
        inventory=_inventory(row),
        last_seen_ms=row.last_seen_ms,
        registered_ms=row.registered_ms,
        allocated_cpu=usage.get("cpu", 0.0),
        allocated_memory_mib=usage.get("memory_mib", 0),
        allocated_gpus=sorted(usage.get("gpus", [])),
        containers=usage.get("containers", 0),
        energy_source=row.energy_source,
        declared_carbon_g_per_kwh=row.carbon_g_per_kwh,
        carbon_g_per_kwh=(
            row.carbon_now_g_per_kwh
            if row.carbon_now_g_per_kwh is not None
            else row.carbon_g_per_kwh
        ),
        carbon_source="grid" if row.carbon_now_g_per_kwh is not None else "declared",
        carbon_note=row.carbon_note,
        energy_readings_dropped=row.energy_readings_dropped or 0,
        isolation=None if isolation is None else IsolationReport.model_validate(isolation),
        isolated=bool(row.isolated),
        verified=bool(row.verified),
        verification=(
            None if verification is None else HostVerification.model_validate(verification)
        ),
        agent_session=row.agent_session,
    )


# Energy reported by an agent only ever grows: a stale (older) report never lowers it.
_SET_ENERGY = (
    update(containers)
    .where(
        containers.c.id == bindparam("b_id"),
        containers.c.host_id == bindparam("b_host"),
        or_(containers.c.energy_mwh.is_(None), containers.c.energy_mwh < bindparam("b_energy")),
    )
    .values(energy_mwh=bindparam("b_energy"), energy_estimated=bindparam("b_estimated"))
)


def host_usage(conn: Connection, host_ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Resources held by live containers, per host."""
    q = select(
        containers.c.host_id, containers.c.cpu, containers.c.memory_mib, containers.c.gpu_indices
    ).where(containers.c.state.in_(LIVE_CONTAINER_STATES))
    if host_ids is not None:
        q = q.where(containers.c.host_id.in_(host_ids))
    usage: dict[str, dict[str, Any]] = {}
    for r in conn.execute(q):
        u = usage.setdefault(
            r.host_id, {"cpu": 0.0, "memory_mib": 0, "gpus": set(), "containers": 0}
        )
        u["cpu"] += r.cpu
        u["memory_mib"] += r.memory_mib
        u["gpus"].update(r.gpu_indices or [])
        u["containers"] += 1
    return usage


def register_host(
    conn: Connection,
    principal: Principal,
    req: HostRegister,
    now_ms: int,
    *,
    allow_fake_gpus: bool = False,
) -> HostInfo:
    """Register (or re-register) the host ``req.name`` of the token's account; the same name
    gets the same id back, so an agent restart keeps its host. Its isolation report is stored
    and its self-test verified (:func:`apply_self_test`). Hosts with declared fake GPUs are
    refused unless ``allow_fake_gpus`` (the server's dev mode)."""
    _require_host_scope(principal)
    if not allow_fake_gpus and (
        any(g.fake for g in req.inventory.gpus) or any(r.fake for r in req.self_test)
    ):
        raise PermissionDeniedError(
            "this host declares fake GPUs (`--fake-gpus`), which only a development exchange "
            "accepts (CRUCIBLE_DEV_MODE=1 on the server, as `crucible up` runs it); run the "
            "agent without --fake-gpus to offer the real devices"
        )
    # Held so that an approval given or taken back meanwhile (services/accounts.py
    # update_account) applies to this host too.
    lock_row(conn, accounts, accounts.c.id, principal.account_id)
    row = conn.execute(
        select(hosts).where(hosts.c.account_id == principal.account_id, hosts.c.name == req.name)
    ).first()
    provider = bool(
        conn.execute(
            select(accounts.c.provider).where(accounts.c.id == principal.account_id)
        ).scalar()
    )
    values = {
        "region": req.region,
        "state": "ready",
        "inventory": req.inventory.model_dump(mode="json"),
        "agent_version": req.agent_version,
        "last_seen_ms": now_ms,
        # No report (an older agent) is runtime "process": its owner's code only.
        "isolation": None if req.isolation is None else req.isolation.model_dump(mode="json"),
        "isolated": _open_to_others(req.isolation, provider=provider),
    }
    if req.address is not None:
        values["address"] = req.address
    if req.energy_source is not None:
        values["energy_source"] = req.energy_source
    if req.carbon_g_per_kwh is not None:
        values["carbon_g_per_kwh"] = req.carbon_g_per_kwh
    if row is None:
        host_id = new_id("ho")
        conn.execute(
            insert(hosts).values(
                id=host_id,
                account_id=principal.account_id,
                name=req.name,
                registered_ms=now_ms,
                agent_session=1,
                **values,
            )
        )
    else:
        host_id = row.id
        # A new agent process: the previous one's containers died with it (the new one kills
        # what is left), at the latest when it was last heard from. They end at the new one's
        # first sync, but are billed no later than that. (An agent that registers again with
        # its containers running says which session it resumes.)
        if req.resumes_session != row.agent_session:
            conn.execute(
                update(containers)
                .where(
                    containers.c.host_id == host_id,
                    containers.c.state.in_(LIVE_CONTAINER_STATES),
                    or_(
                        containers.c.stop_by_ms.is_(None),
                        containers.c.stop_by_ms > row.last_seen_ms,
                    ),
                )
                .values(stop_by_ms=row.last_seen_ms)
            )
        conn.execute(
            update(hosts)
            .where(hosts.c.id == host_id)
            .values(agent_session=hosts.c.agent_session + 1, **values)
        )
    apply_self_test(conn, host_id, req.inventory, req.self_test, now_ms)
    return require_host(conn, principal, host_id)


def _open_to_others(report: IsolationReport | None, *, provider: bool) -> bool:
    """Whether other accounts' code may run on a host (``hosts.isolated``): its isolation is
    full (a sandbox its code cannot leave, measured by its agent) and its account is an
    approved provider (the host's owner sees what runs there: code, inputs, secrets). Any
    other host runs its owner's code only."""
    return provider and report is not None and report.full()


def open_hosts_of(
    conn: Connection, account_id: str, *, provider: bool, now_ms: int = 0
) -> tuple[int, list[str]]:
    """Apply an account's provider approval (given or taken back) to its registered hosts;
    returns how many now run other accounts' work, and wake-up keys. Taken back, the other
    accounts' containers on its hosts are asked to stop (their calls go back to the queue
    and run elsewhere): a warm container took new calls there for as long as it lived."""
    opened = 0
    keys: list[str] = []
    for r in conn.execute(
        select(hosts.c.id, hosts.c.isolation, hosts.c.isolated).where(
            hosts.c.account_id == account_id
        )
    ).all():
        report = None if r.isolation is None else IsolationReport.model_validate(r.isolation)
        isolated = _open_to_others(report, provider=provider)
        opened += isolated
        if isolated != bool(r.isolated):  # a write of the watched column: the leader sees it
            conn.execute(update(hosts).where(hosts.c.id == r.id).values(isolated=isolated))
        if not isolated:
            for c in conn.execute(
                select(containers.c.id).where(
                    containers.c.host_id == r.id,
                    containers.c.account_id != account_id,
                    containers.c.state.in_(("pending", "starting", "running")),
                )
            ).all():
                keys += request_stop(conn, c.id, now_ms)
    return opened, keys


def apply_self_test(
    conn: Connection,
    host_id: str,
    inventory: Inventory | None,
    results: list[SelfTestResult],
    now_ms: int,
) -> HostVerification:
    """Verify a host's self-test ``results`` against the catalog and store the verdict with
    its figures (``inventory`` None: the host's stored one). The host's first verdict and
    each change of verdict are audited (not every hourly rerun that changes nothing)."""
    row = conn.execute(
        select(hosts.c.inventory, hosts.c.verified, hosts.c.verification).where(
            hosts.c.id == host_id
        )
    ).one()
    inv = inventory if inventory is not None else Inventory.model_validate(row.inventory)
    verdict = verify(inv, results, now_ms)
    conn.execute(
        update(hosts)
        .where(hosts.c.id == host_id)
        .values(verified=verdict.verified, verification=verdict.model_dump(mode="json"))
    )
    if row.verification is None or bool(row.verified) != verdict.verified:
        audit.record(
            conn,
            None,
            "host.verification",
            host_id,
            now_ms,
            verified=verdict.verified,
            was_verified=bool(row.verified),
            reason=verdict.reason,
        )
    return verdict


def agent_session(conn: Connection, host_id: str) -> int:
    """How many times the host registered: which agent process its syncs come from."""
    return int(
        conn.execute(select(hosts.c.agent_session).where(hosts.c.id == host_id)).scalar_one()
    )


# What a sync needs of its host, read with a statement built once (this runs for every
# agent every second: building and caching a new statement each time cost more than the
# database's own work).
_HOST_FOR_SYNC = select(
    hosts.c.id,
    hosts.c.account_id,
    hosts.c.state,
    hosts.c.agent_session,
    hosts.c.energy_readings_dropped,
).where(hosts.c.id == bindparam("b_id"))


def host_for_sync(
    conn: Connection, principal: Principal, host_id: str, agent_session: int | None = None
) -> Any:
    """The host ``host_id`` of the token's account (any, for an admin token) as a sync needs
    it: id, account, state, agent session, energy readings dropped. NotFound otherwise, as
    :func:`require_host`, without reading and parsing the whole host.

    ``agent_session``: the registration the syncing agent holds (None: an older agent, not
    checked). Another agent registered the host since: :class:`HostSupersededError`, so two
    agents under one name never both run the host's containers."""
    _require_host_scope(principal)
    row = conn.execute(_HOST_FOR_SYNC, {"b_id": host_id}).first()
    if row is None or (not principal.is_admin and row.account_id != principal.account_id):
        raise NotFoundError(f"host {host_id} not found; register again")
    if agent_session is not None and agent_session != row.agent_session:
        raise HostSupersededError(
            f"another agent registered as host {host_id} after this one (registration "
            f"{row.agent_session}; this agent holds {agent_session}): only the newest agent "
            "of a host syncs. Give each agent its own --name, or stop the other one"
        )
    return row


_SEEN = (
    update(hosts)
    .where(
        hosts.c.id == bindparam("b_id"),
        hosts.c.state == "ready",
        hosts.c.last_seen_ms < bindparam("b_ms"),
    )
    .values(last_seen_ms=bindparam("b_ms"))
)


def flush_heartbeats(conn: Connection, heartbeats: Heartbeats) -> int:
    """Write the heartbeats noted by syncs of this process (server/heartbeats.py) in one
    statement; returns how many hosts. A host lost meanwhile stays lost (its agent's next
    sync brings it back). Should ``conn``'s transaction roll back, the heartbeats taken are
    kept for the next write."""
    seen = heartbeats.take()
    if not seen:
        return 0
    try:
        execute_many(conn, _SEEN, [{"b_id": h, "b_ms": ms} for h, ms in seen.items()])
    except Exception:
        heartbeats.give_back(seen)
        raise
    return len(seen)


def require_host(conn: Connection, principal: Principal, host_id: str) -> HostInfo:
    _require_host_scope(principal)
    q = select(hosts).where(hosts.c.id == host_id)
    if not principal.is_admin:
        q = q.where(hosts.c.account_id == principal.account_id)
    row = conn.execute(q).first()
    if row is None:
        raise NotFoundError(f"host {host_id} not found; register again")
    return host_info(row)


def list_hosts(conn: Connection, owner: str | None = None) -> list[HostInfo]:
    """Every host of the exchange (hosts are public: renters choose among them), or those of
    the account ``owner``."""
    q = select(hosts).where(hosts.c.state != "removed").order_by(hosts.c.registered_ms)
    if owner is not None:
        q = q.where(hosts.c.account_id == owner)
    rows = list(conn.execute(q))
    usage = host_usage(conn, [r.id for r in rows] if owner is not None else None)
    return [host_info(r, usage.get(r.id)) for r in rows]


def end_container(
    conn: Connection,
    container_id: str,
    now_ms: int,
    *,
    exit_code: int | None,
    reason: str,
    message: str | None,
    crashed: bool,
    max_infra_requeues: int,
    meter_interval_ms: int,
    stopped_ms: int | None = None,
) -> list[str]:
    """Mark a container stopped, meter it to the end, requeue its running calls. Idempotent.

    ``stopped_ms`` is when it stopped, if earlier than ``now_ms``: for a lost host, the last
    moment it was known alive (metering ends there)."""
    stopped_at = now_ms if stopped_ms is None else min(now_ms, stopped_ms)
    ended = conn.execute(
        _END_CONTAINER,
        {
            "b_id": container_id,
            "b_at": stopped_at,
            "b_code": exit_code,
            "b_reason": reason,
            "b_message": (message or "")[-4000:] or None,
        },
    ).first()
    if ended is None:
        return []
    if ended.gpu_model is not None:  # a GPU container (a market lease) ended
        _count_lease_end(conn, ended.host_id, faulted=reason in ("host_lost", "lost"))
    # Meter the container's last interval now, so a bill read right after shows it whole.
    meter_containers(conn, now_ms, meter_interval_ms, container_id=container_id)
    detail = f"the container exited ({reason}" + (
        f", code {exit_code})" if exit_code is not None else ")"
    )
    if message:
        detail += f": {message.strip().splitlines()[-1][:300]}"
    keys = requeue_calls_of_container(
        conn,
        container_id,
        now_ms,
        crashed=crashed,
        message=detail,
        max_infra_requeues=max_infra_requeues,
        reason=reason,
        ended_ms=stopped_at,
    )
    keys += settle_pod_of(conn, ended.function_id, now_ms)  # a pod's run ends with it
    return [*keys, f"container:{container_id}"]


# Built once (every container's end runs them): building a statement with a CASE costs
# several times what SQLite takes to run it.
_END_CONTAINER = (
    update(containers)
    .where(containers.c.id == bindparam("b_id"), containers.c.state != "stopped")
    .values(
        state="stopped",
        # Never before it started (a container placed after the host's last sync).
        stopped_ms=case(
            (containers.c.started_ms > bindparam("b_at"), containers.c.started_ms),
            else_=bindparam("b_at"),
        ),
        exit_code=bindparam("b_code"),
        exit_reason=bindparam("b_reason"),
        exit_message=bindparam("b_message"),
    )
    .returning(containers.c.function_id, containers.c.host_id, containers.c.gpu_model)
)
_LEASE_ENDED = (
    update(hosts)
    .where(hosts.c.id == bindparam("b_id"))
    .values(leases_ended=hosts.c.leases_ended + 1)
)
_LEASE_FAULTED = _LEASE_ENDED.values(leases_faulted=hosts.c.leases_faulted + 1)


def _count_lease_end(conn: Connection, host_id: str, *, faulted: bool) -> None:
    """A GPU container (a market lease) ended: count it towards its host's reliability."""
    conn.execute(_LEASE_FAULTED if faulted else _LEASE_ENDED, {"b_id": host_id})


_UNSTOPPED_ON_HOST = select(
    containers.c.id, containers.c.state, containers.c.started_ms, containers.c.seen_in_sync
).where(containers.c.host_id == bindparam("b_host"), containers.c.state != "stopped")
# A pending container its agent reports started (every placement's first sync).
_STARTED = (
    update(containers)
    .where(containers.c.id == bindparam("b_id"), containers.c.state == "pending")
    .values(
        state="starting",
        started_ms=bindparam("b_now"),
        last_active_ms=bindparam("b_now"),
        seen_in_sync=bindparam("b_mark"),
    )
)
# A container no sync has reported yet (its worker reached the server first) is taken for
# gone by a sync that does not report it only this long after it started: that sync may
# have been taken before the agent started it.
_UNREPORTED_GRACE_MS = 10_000
# A sync's mark: the agent's session (bumped at each registration) over its sync number.
_SESSION_SHIFT = 32


def sync_mark(agent_session: int, seq: int) -> int:
    """Orders an agent's syncs across its restarts: every sync of a later agent process comes
    after every sync of an earlier one (a new process numbers its syncs from 1 again)."""
    return (agent_session << _SESSION_SHIFT) + min(seq, (1 << _SESSION_SHIFT) - 1)


def process_reports(
    conn: Connection,
    host_id: str,
    reports: list[ContainerReport],
    now_ms: int,
    *,
    fresh: bool,
    max_infra_requeues: int,
    meter_interval_ms: int,
    seq: int = 0,
    energy_readings_dropped: int | None = None,
    host: Any = None,
    heartbeats: Heartbeats | None = None,
) -> tuple[list[str], list[str]]:
    """Apply an agent's reports. Returns (container ids the agent must stop, wake-up keys).

    With ``heartbeats`` and the ``host`` row of :func:`host_for_sync`, a ready host's
    heartbeat is noted there, to be written with other hosts' in one statement, instead of
    in this transaction; without them (or for a host that was lost) it is written here.

    ``fresh`` is False for a report older than one already applied: it may still record exits
    but must not conclude that an unreported container is gone. ``seq`` (the sync's number,
    0 for an agent that does not number them) decides the same in the store, per container:
    an unreported container is gone only if this sync is later than the one that first
    reported it started. ``fresh`` alone cannot: it is this replica's memory, and two syncs of
    one agent (its loop and its exit reporter) may be applied out of order here or reach two
    replicas. Reported energy is recorded before exits are metered, so a container's last
    interval carries its last figure.
    """
    seen: dict[str, Any] = {}
    if host is not None and host.state == "offline" and not fresh:
        pass  # a report older than the agent's last (it left): the host stays offline
    elif heartbeats is None or host is None or host.state != "ready":
        seen = {"last_seen_ms": now_ms, "state": "ready"}  # a lost host is back at once
    else:
        heartbeats.seen(host_id, now_ms)  # written with other hosts' (flush_heartbeats)
    if (
        energy_readings_dropped is not None
        and fresh
        and (host is None or host.energy_readings_dropped != energy_readings_dropped)
    ):
        seen["energy_readings_dropped"] = energy_readings_dropped
    if seen:
        conn.execute(update(hosts).where(hosts.c.id == host_id).values(**seen))
    energy = [
        {
            "b_id": r.container_id,
            "b_host": host_id,
            "b_energy": r.energy_mwh,
            "b_estimated": r.energy_estimated,
        }
        for r in reports
        if r.energy_mwh is not None
    ]
    if energy:
        conn.execute(_SET_ENERGY, energy)
    rows = {r.id: r for r in conn.execute(_UNSTOPPED_ON_HOST, {"b_host": host_id})}
    mark = None
    if seq:
        session = host.agent_session if host is not None else agent_session(conn, host_id)
        mark = sync_mark(int(session), seq)
    stop: list[str] = []
    keys: list[str] = []
    reported: set[str] = set()
    for rep in reports:
        reported.add(rep.container_id)
        row = rows.get(rep.container_id)
        if rep.state == "exited":
            if row is None:
                continue
            # "stopped": the agent stopped it (asked by us, or shutting down) - not a crash.
            asked = row.state == "stopping" or rep.reason == "stopped"
            crashed = (
                not asked
                and rep.reason != "image_failed"
                and (rep.reason in ("killed", "oom", "start_failed") or (rep.exit_code or 0) != 0)
            )
            # Its image did not pull: it never ran (the agent never reported it started), so
            # nothing is charged, and the function's queued calls fail with the image's error.
            # Only a container still pending, of a function that has an image, can have failed
            # its pull: an agent saying so of another ends that container as a crash, and
            # fails no call.
            unbilled = rep.reason == "image_failed"
            reason = rep.reason or "exited"
            if unbilled and (row.state != "pending" or not _has_image(conn, rep.container_id)):
                unbilled, crashed, reason = False, not asked, "exited"
            if unbilled and rep.error_code in IMAGE_ERROR_CODES and not asked:
                fid = conn.execute(
                    select(containers.c.function_id).where(containers.c.id == rep.container_id)
                ).scalar_one()
                keys += fail_queued_calls(
                    conn, fid, str(rep.error_code), rep.message or "the image did not pull", now_ms
                )
            if rep.log_tail and not asked:  # before its calls are ended: they name it
                keys += add_exit_tail(conn, rep.container_id, rep.log_tail, now_ms)
            keys += end_container(
                conn,
                rep.container_id,
                now_ms,
                exit_code=rep.exit_code,
                reason="stopped" if asked else reason,
                message=rep.message,
                crashed=crashed,
                max_infra_requeues=max_infra_requeues,
                meter_interval_ms=meter_interval_ms,
            )
            continue
        if row is None:
            stop.append(rep.container_id)  # unknown to us, or already ended: it must go
        elif rep.state == "pulling":
            # Still pending (a pull is not metered); shown as pulling until it starts.
            if row.state == "pending":
                conn.execute(
                    update(containers)
                    .where(
                        containers.c.id == rep.container_id,
                        containers.c.state == "pending",
                        containers.c.pulling_ms.is_(None),
                    )
                    .values(pulling_ms=now_ms)
                )
            elif row.state == "stopping":
                stop.append(rep.container_id)
        elif row.state == "pending":
            conn.execute(_STARTED, {"b_id": rep.container_id, "b_now": now_ms, "b_mark": mark})
        else:
            if row.state == "stopping":
                stop.append(rep.container_id)
            if mark is not None and row.seen_in_sync is None:
                # Ready before any sync reported it (its worker reached us first).
                conn.execute(
                    update(containers)
                    .where(containers.c.id == rep.container_id, containers.c.seen_in_sync.is_(None))
                    .values(seen_in_sync=mark)
                )
    if fresh:
        for cid, row in rows.items():
            if (
                cid not in reported
                and row.state in ("starting", "running", "stopping")
                and _gone_unreported(row, mark, now_ms)
            ):
                keys += end_container(
                    conn,
                    cid,
                    now_ms,
                    exit_code=None,
                    reason="lost",
                    message="the agent no longer runs this container (agent restarted?)",
                    crashed=False,
                    max_infra_requeues=max_infra_requeues,
                    meter_interval_ms=meter_interval_ms,
                )
    return stop, keys


def _has_image(conn: Connection, container_id: str) -> bool:
    """Whether the container's function runs in an image of its own (an OCI image to pull)."""
    row = conn.execute(
        select(containers.c.function_id, functions.c.spec_rev)
        .join(functions, functions.c.id == containers.c.function_id)
        .where(containers.c.id == container_id)
    ).first()
    return row is not None and SPECS.at(conn, row.function_id, row.spec_rev).spec.image is not None


def _gone_unreported(row: Any, mark: int | None, now_ms: int) -> bool:
    """Whether a sync (of ``mark``) that does not report the live container ``row`` shows
    that its agent no longer runs it, rather than that the sync was taken before it started
    (two syncs of one agent may be applied out of order)."""
    if mark is None:  # an agent that does not number its syncs
        return True
    if row.seen_in_sync is not None:
        return bool(mark > row.seen_in_sync)
    return row.started_ms is None or now_ms - row.started_ms >= _UNREPORTED_GRACE_MS


# Built once: every sync's long poll runs it at least once a second.
_TO_START_OR_STOP = (
    select(
        containers.c.id,
        containers.c.state,
        containers.c.account_id,
        containers.c.function_id,
        containers.c.cpu,
        containers.c.memory_mib,
        containers.c.gpu_model,
        containers.c.gpu_indices,
        containers.c.start_after_ms,
        containers.c.stop_grace_ms,
        functions.c.app_id,
        functions.c.spec_rev,
    )
    .join(functions, functions.c.id == containers.c.function_id)
    .where(
        containers.c.host_id == bindparam("b_host"),
        or_(containers.c.state == "pending", containers.c.state == "stopping"),
    )
)


def assignments_for_host(
    conn: Connection, host_id: str, secret: str, now_ms: int
) -> tuple[list[ContainerAssignment], list[str], dict[str, float]]:
    """Containers the agent should start (pending, their devices clear of any preempted
    lease's grace period) and stop (stopping), with the SIGTERM→SIGKILL grace of stops that
    have their own (preemptions)."""
    rows = conn.execute(_TO_START_OR_STOP, {"b_host": host_id}).all()
    start: list[ContainerAssignment] = []
    stop: list[str] = []
    grace: dict[str, float] = {}
    pods = pod_assignments(conn, {r.function_id for r in rows if r.state == "pending"})
    # Typed, and parsed once per function version (not per assignment).
    specs = SPECS.get_many(conn, {r.function_id: r.spec_rev for r in rows if r.state == "pending"})
    for r in rows:
        if r.state == "stopping":
            stop.append(r.id)
            if r.stop_grace_ms is not None:
                grace[r.id] = r.stop_grace_ms / 1000
            continue
        if r.start_after_ms > now_ms:
            continue
        gpus = [GpuAsk(model=r.gpu_model, count=len(r.gpu_indices))] if r.gpu_model else []
        f = specs[r.function_id].spec
        start.append(
            ContainerAssignment(
                container_id=r.id,
                function_id=r.function_id,
                account_id=r.account_id,
                app_id=r.app_id,
                code=f.code,
                resources=Resources(cpu=r.cpu, memory_mib=r.memory_mib, gpus=gpus),
                gpu_indices=list(r.gpu_indices or []),
                is_async=f.is_async,
                max_inputs=f.max_inputs,
                max_batch_size=f.max_batch_size,
                class_params=f.class_params,
                web=f.web,
                batch_wait_ms=f.batch_wait_ms,
                token=container_token(secret, r.id),
                image=f.image,
                network=f.network,
                secrets=bool(f.secrets),
                volumes=dict(f.volumes),
                pod=pods.get(r.function_id),
            )
        )
    return start, stop, grace


def oldest_ready_sync(conn: Connection) -> int | None:
    """The earliest last sync of any ready host (None: no host is ready)."""
    return conn.execute(
        select(func.min(hosts.c.last_seen_ms)).where(hosts.c.state == "ready")
    ).scalar()


def host_left(
    conn: Connection, host_id: str, now_ms: int, max_infra_requeues: int, meter_interval_ms: int
) -> list[str]:
    """A host whose agent stopped and said so (its last sync, ``leaving``) is ``offline``:
    no work is placed there until an agent registers it again. Its containers were reported
    ended by that sync; any it did not report (assigned, not started yet) end now and their
    calls are requeued. Returns wake-up keys."""
    conn.execute(
        update(hosts).where(hosts.c.id == host_id, hosts.c.state == "ready").values(state="offline")
    )
    return _end_containers_of(
        conn,
        host_id,
        now_ms,
        "lost",
        f"host {host_id}'s agent stopped",
        max_infra_requeues,
        meter_interval_ms,
    )


def _end_containers_of(
    conn: Connection,
    host_id: str,
    now_ms: int,
    reason: str,
    message: str,
    max_infra_requeues: int,
    meter_interval_ms: int,
    stopped_ms: int | None = None,
) -> list[str]:
    """End every container of a host that is gone (its calls requeued), as of ``stopped_ms``
    when that is earlier than now; wake-up keys."""
    keys: list[str] = []
    for c in conn.execute(
        select(containers.c.id).where(
            containers.c.host_id == host_id, containers.c.state != "stopped"
        )
    ).all():
        keys += end_container(
            conn,
            c.id,
            now_ms,
            exit_code=None,
            reason=reason,
            message=message,
            crashed=False,
            max_infra_requeues=max_infra_requeues,
            meter_interval_ms=meter_interval_ms,
            stopped_ms=stopped_ms,
        )
    return keys


def mark_lost_hosts(
    conn: Connection, now_ms: int, timeout_ms: int, max_infra_requeues: int, meter_interval_ms: int
) -> list[str]:
    """Hosts silent for ``timeout_ms`` are lost: their containers end (stopped, and metered,
    as of the host's last sync), calls are requeued."""
    lost = [
        (r.id, r.last_seen_ms)
        for r in conn.execute(
            select(hosts.c.id, hosts.c.last_seen_ms).where(
                hosts.c.state == "ready", hosts.c.last_seen_ms < now_ms - timeout_ms
            )
        )
    ]
    keys: list[str] = []
    for host_id, last_seen_ms in lost:
        conn.execute(update(hosts).where(hosts.c.id == host_id).values(state="lost"))
        # Billed up to the last moment the host was known alive, not to now.
        keys += _end_containers_of(
            conn,
            host_id,
            now_ms,
            "host_lost",
            f"host {host_id} stopped heartbeating",
            max_infra_requeues,
            meter_interval_ms,
            stopped_ms=last_seen_ms,
        )
    return keys
