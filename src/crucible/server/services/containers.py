"""Containers: creation from the scheduler's plan, the worker's exchange, stopping."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, func, insert, or_, select, update

from crucible.core.ledger import format_usd
from crucible.core.market import Advanced, Offer, Preemption
from crucible.core.scheduling import LeaseTerms, StartContainer
from crucible.errors import NotFoundError
from crucible.protocol.calls import CallInfo
from crucible.protocol.common import RetryPolicy
from crucible.protocol.containers import ContainerSummary, ExchangeReply, OutputItem
from crucible.protocol.ids import new_id
from crucible.server.auth import Principal
from crucible.server.services import calls as calls_svc
from crucible.server.services.calls import (
    claim_inputs,
    record_outputs,
    requeue_preempted_calls,
)
from crucible.server.services.function_specs import SPECS
from crucible.server.store.bulk import execute_many
from crucible.server.store.tables import apps, calls, containers, functions, pods

__all__ = [
    "ContainerFacts",
    "cancel_call",
    "carry_out_advance",
    "carry_out_preemptions",
    "create_containers",
    "exchange_step",
    "load_container_facts",
    "request_stop",
    "stop_for_market",
]

log = logging.getLogger("crucible.scheduler")

# Once a second is plenty for the scheduler's idle detection (scale-down windows are seconds).
_TOUCH_EVERY_MS = 1000


@dataclass(frozen=True)
class ContainerFacts:
    """What never changes during a container's life: read once, then kept in memory."""

    id: str
    account_id: str
    function_id: str
    rate_micros_per_hour: int
    timeout_s: float
    retries: RetryPolicy
    # Its worker runs the inputs it claims one after another (not @crucible.concurrent, not
    # @crucible.batched): a claim's deadline then allows for each of them in turn.
    sequential: bool = True


_SEL_FACTS = (
    select(
        containers.c.id,
        containers.c.account_id,
        containers.c.function_id,
        containers.c.rate_micros_per_hour,
        functions.c.spec_rev,
    )
    .join(functions, functions.c.id == containers.c.function_id)
    .where(containers.c.id == bindparam("b_id"))
)
_SEL_STATE = select(containers.c.state).where(containers.c.id == bindparam("b_id"))
# PostgreSQL: the container's row is locked for the exchange's transaction (FOR NO KEY
# UPDATE: the exchange may update the row itself, and two exchanges of one container must not
# both hold a share lock and upgrade it), so a concurrent end of the container (end_container
# requeues its running calls) waits for the claim to commit and requeues what it claimed,
# instead of leaving it running on a stopped container until its timeout.
_SEL_STATE_LOCKED = _SEL_STATE.with_for_update(key_share=True)
_MARK_READY = (
    update(containers)
    .where(containers.c.id == bindparam("b_id"), containers.c.state.in_(("pending", "starting")))
    .values(
        state="running",
        ready_ms=bindparam("b_now"),
        last_active_ms=bindparam("b_now"),
        # The worker can reach us before its agent reported the start; metering starts here
        # then, never later than the container's first sign of life.
        started_ms=func.coalesce(containers.c.started_ms, bindparam("b_now")),
    )
)
_TOUCH = (
    update(containers)
    .where(containers.c.id == bindparam("b_id"))
    .values(last_active_ms=bindparam("b_now"))
)


def create_containers(
    conn: Connection,
    starts: Sequence[StartContainer],
    accounts_by_function: dict[str, str],
    cpu_offer: Callable[[str], Offer],
    fee_ppm: int,
    now_ms: int,
) -> list[str]:
    """Insert pending containers for the scheduler's starts; returns wake-up keys (hosts).

    A GPU container is its market lease (id, tier, price, reservation). A CPU-only one pays
    its host's CPU offer on demand: cores x core-hour plus GiB x GiB-hour."""
    keys: list[str] = []
    rows = []
    for s in starts:
        lease = s.lease
        if lease is None:
            offer = cpu_offer(s.host_id)
            lease = LeaseTerms(
                container_id=new_id("ct"),
                tier="on_demand",
                unit_price_micros=offer.on_demand,
                rate_micros_per_hour=round(
                    s.cpu * offer.on_demand + s.memory_mib * offer.memory_on_demand / 1024
                ),
                reservation_id=None,
                start_after_ms=0,
            )
        rows.append(
            {
                "id": lease.container_id,
                "account_id": accounts_by_function[s.function_id],
                "function_id": s.function_id,
                "host_id": s.host_id,
                "state": "pending",
                "cpu": s.cpu,
                "memory_mib": s.memory_mib,
                "gpu_model": s.gpu_model,
                "gpu_indices": list(s.gpu_indices),
                "rate_micros_per_hour": lease.rate_micros_per_hour,
                "tier": lease.tier,
                "unit_price_micros": lease.unit_price_micros,
                "reservation_id": lease.reservation_id,
                "start_after_ms": lease.start_after_ms,
                "fee_ppm": fee_ppm,
                "created_ms": now_ms,
                "last_active_ms": now_ms,
            }
        )
        keys.append(f"host:{s.host_id}")
    if rows:
        conn.execute(insert(containers), rows)
        # A pod's disk will be where its container runs: noted now rather than when the
        # scheduler next settles pods (a no-op for functions that are not pods).
        execute_many(
            conn, _POD_ON_HOST, [{"b_fn": s.function_id, "b_host": s.host_id} for s in starts]
        )
    return keys


_POD_ON_HOST = (
    update(pods)
    .where(
        pods.c.function_id == bindparam("b_fn"),
        pods.c.state == "active",
        or_(pods.c.host_id.is_(None), pods.c.host_id != bindparam("b_host")),
    )
    .values(host_id=bindparam("b_host"))
)


def stop_for_market(
    conn: Connection, container_id: str, at_ms: int, cause: str, grace_ms: int | None
) -> list[str]:
    """The container's lease ended under it (preempted, out of credit, its reservation
    expired): metering stops at ``at_ms``, and its agent stops it with ``grace_ms`` between
    SIGTERM and SIGKILL (None: the agent's default)."""
    conn.execute(
        update(containers)
        .where(containers.c.id == container_id, containers.c.lease_end_ms.is_(None))
        .values(lease_end_ms=at_ms, end_cause=cause, stop_grace_ms=grace_ms)
    )
    return request_stop(conn, container_id, at_ms)


def carry_out_preemptions(conn: Connection, preemptions: Iterable[Preemption]) -> list[str]:
    """Carry out the market's preemptions: each lease's metering stops at its notice, its
    calls are requeued as preempted (cost carried), and its agent stops it (SIGTERM at once,
    SIGKILL at the deadline). Returns wake-up keys."""
    keys: list[str] = []
    for p in preemptions:
        cid = p.lease.lease_id
        log.info(
            "preempting container %s (%s by %s at %s/device-hour)",
            cid,
            p.cause.value,
            p.by_id,
            format_usd(p.by_price),
        )
        keys += requeue_preempted_calls(conn, cid, p.lease.rate_micros_per_hour, p.notice_ms)
        keys += stop_for_market(conn, cid, p.notice_ms, "preempted", p.deadline_ms - p.notice_ms)
    return keys


def carry_out_advance(conn: Connection, advanced: Advanced, now_ms: int) -> list[str]:
    """Act on what the passage of time did in the market: preemptions for reservation
    windows about to start, and leases whose reservation window closed (stopped)."""
    keys = carry_out_preemptions(conn, advanced.preemptions)
    for lease in advanced.expired:
        keys += stop_for_market(conn, lease.lease_id, now_ms, "expired", None)
    return keys


def cancel_call(
    conn: Connection, principal: Principal, call_id: str, now_ms: int, max_infra_requeues: int
) -> tuple[CallInfo, list[str]]:
    """Cancel a call; a running one's container is stopped (a Python function cannot be
    interrupted from outside), and the other calls it runs (a concurrent function's) are
    queued again at once, for free, rather than when the stop ends them. Returns its info
    and the wake-up keys."""
    info, keys, container = calls_svc.cancel_call(conn, principal, call_id, now_ms)
    if container is not None:
        keys += request_stop(conn, container, now_ms)
        keys += calls_svc.requeue_calls_of_container(
            conn,
            container,
            now_ms,
            crashed=False,
            message="another call its container ran was cancelled, which stopped the container",
            max_infra_requeues=max_infra_requeues,
        )
    return info, keys


# How long past a stop's grace a container is still billed while its agent has not reported
# it stopped: an honest agent reports within a sync or two; a host that goes on reporting a
# stopped container as running is paid no more than this for it.
STOP_ALLOWANCE_MS = 60_000


def list_containers(
    conn: Connection, principal: Principal, *, app: str | None, ended: bool, limit: int
) -> list[ContainerSummary]:
    """The account's containers, newest first: those not yet stopped, or with ``ended``
    the stopped ones too; of one app (its id or name) when ``app`` is given."""
    query = (
        select(
            containers.c.id,
            containers.c.state,
            containers.c.gpu_model,
            containers.c.gpu_indices,
            containers.c.cpu,
            containers.c.memory_mib,
            containers.c.created_ms,
            containers.c.ready_ms,
            containers.c.stopped_ms,
            containers.c.exit_reason,
            functions.c.name.label("function"),
            apps.c.id.label("app_id"),
            apps.c.name.label("app"),
        )
        .join(functions, functions.c.id == containers.c.function_id)
        .join(apps, apps.c.id == functions.c.app_id)
        .where(containers.c.account_id == principal.account_id)
        .order_by(containers.c.created_ms.desc(), containers.c.id.desc())
        .limit(limit)
    )
    if not ended:
        query = query.where(containers.c.state != "stopped")
    if app is not None:
        query = query.where(or_(apps.c.id == app, apps.c.name == app))
    return [
        ContainerSummary(
            id=r.id,
            app_id=r.app_id,
            app=r.app,
            function=r.function,
            state=r.state,
            gpu_model=r.gpu_model,
            gpu_count=len(r.gpu_indices or ()),
            cpu=r.cpu,
            memory_mib=r.memory_mib,
            created_ms=r.created_ms,
            ready_ms=r.ready_ms,
            stopped_ms=r.stopped_ms,
            exit_reason=r.exit_reason,
        )
        for r in conn.execute(query)
    ]


def request_stop(conn: Connection, container_id: str, now_ms: int) -> list[str]:
    """Ask a container's agent to stop it (SIGTERM, grace, SIGKILL); it is billed until it
    has stopped, at most until its grace and :data:`STOP_ALLOWANCE_MS` have passed.
    Idempotent; returns wake-up keys."""
    row = conn.execute(
        select(containers.c.state, containers.c.host_id, containers.c.stop_grace_ms).where(
            containers.c.id == container_id
        )
    ).first()
    if row is None or row.state in ("stopping", "stopped"):
        return []
    stop_by = now_ms + (row.stop_grace_ms or 0) + STOP_ALLOWANCE_MS
    conn.execute(
        update(containers)
        .where(containers.c.id == container_id)
        .values(state="stopping", stop_by_ms=stop_by)
    )
    return [f"host:{row.host_id}", f"container:{container_id}"]


def load_container_facts(conn: Connection, container_id: str) -> ContainerFacts:
    row = conn.execute(_SEL_FACTS, {"b_id": container_id}).first()
    if row is None:
        raise NotFoundError(f"container {container_id} not found")
    spec = SPECS.at(conn, row.function_id, row.spec_rev).spec
    return ContainerFacts(
        id=row.id,
        account_id=row.account_id,
        function_id=row.function_id,
        rate_micros_per_hour=row.rate_micros_per_hour,
        timeout_s=spec.timeout_s,
        retries=spec.retries,
        sequential=spec.max_inputs <= 1 and spec.max_batch_size <= 1,
    )


def exchange_step(
    conn: Connection,
    facts: ContainerFacts,
    outputs: list[OutputItem],
    want: int,
    now_ms: int,
    *,
    inline_max: int,
    skip_locked: bool,
    groups: dict[str, str | None],
    touched_ms: dict[str, int],
    active: bool = False,
    held: Sequence[str] | None = None,
    ready: bool = True,
) -> tuple[ExchangeReply, list[str]]:
    """One pass of a worker's exchange: record outputs, then claim inputs. Returns the reply
    and the wake-up keys to notify after commit. The container becomes ready at its first
    exchange, unless ``ready`` is False (its worker could not load the function).

    ``groups`` is the server's memory of claimed calls' groups (read and extended here);
    ``touched_ms`` rate-limits writes of the container's last activity; ``active``: the
    worker also finished work that has no row (relayed web requests, server/web_relay.py);
    ``held``: the calls the worker has in hand, when it says (the others running here are
    queued again: their hand-off was lost with a server or a connection)."""
    cid = facts.id
    state = conn.execute(
        _SEL_STATE_LOCKED if skip_locked else _SEL_STATE, {"b_id": cid}
    ).scalar_one_or_none()
    if state is None:
        raise NotFoundError(f"container {cid} not found")
    if state in ("pending", "starting") and ready:
        conn.execute(_MARK_READY, {"b_id": cid, "b_now": now_ms})
        touched_ms[cid] = now_ms
    keys: list[str] = []
    if outputs:
        keys += record_outputs(
            conn,
            cid,
            outputs,
            facts.rate_micros_per_hour,
            facts.retries,
            now_ms,
            inline_max,
            facts.account_id,
            groups=groups,
        )
        for out in outputs:
            groups.pop(out.call_id, None)
    if held is not None:
        keys += _requeue_lost(conn, facts, {*held, *(o.call_id for o in outputs)}, groups)
    if state in ("stopping", "stopped"):
        return ExchangeReply(stop=True), keys
    inputs = claim_inputs(
        conn,
        cid,
        facts.function_id,
        want,
        facts.timeout_s,
        now_ms,
        skip_locked=skip_locked,
        groups=groups,
        sequential=facts.sequential,
    )
    if (outputs or inputs or active) and now_ms - touched_ms.get(cid, 0) >= _TOUCH_EVERY_MS:
        conn.execute(_TOUCH, {"b_id": cid, "b_now": now_ms})
        touched_ms[cid] = now_ms
    return ExchangeReply(inputs=inputs), keys


_RUNNING_HERE = select(calls.c.id).where(
    calls.c.container_id == bindparam("b_container"), calls.c.state == "running"
)
_REQUEUE = (
    update(calls)
    .where(
        calls.c.id.in_(bindparam("b_ids", expanding=True)),
        calls.c.container_id == bindparam("b_container"),
        calls.c.state == "running",
    )
    .values(state="queued", container_id=None, attempts=calls.c.attempts - 1, deadline_ms=None)
)


def unclaim(conn: Connection, container_id: str, call_ids: list[str]) -> None:
    """Queue again calls claimed for ``container_id`` that it never received (a hand-off
    that was not delivered, a reply lost on the way). Not an attempt: the body never ran."""
    conn.execute(_REQUEUE, {"b_ids": call_ids, "b_container": container_id})


def _requeue_lost(
    conn: Connection, facts: ContainerFacts, held: set[str], groups: dict[str, str | None]
) -> list[str]:
    """Queue again the calls running on this container that its worker does not hold: they
    were claimed for it, but the reply carrying them never arrived (the server died after
    committing, or the connection broke). Not an attempt: the body never ran."""
    running = conn.execute(_RUNNING_HERE, {"b_container": facts.id}).scalars().all()
    lost = [cid for cid in running if cid not in held]
    if not lost:
        return []
    unclaim(conn, facts.id, lost)
    for cid in lost:
        groups.pop(cid, None)
    log.warning("container %s: %d call(s) never reached it, queued again", facts.id, len(lost))
    return [f"fn:{facts.function_id}"]
