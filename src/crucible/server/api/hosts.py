"""Hosts: agents register and sync; anyone with a token can list the fleet."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import APIRouter
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from crucible.protocol.containers import ContainerAssignment
from crucible.protocol.hosts import (
    HostInfo,
    HostRegister,
    HostSync,
    HostSyncReply,
    PodDisks,
    PodDisksReply,
)
from crucible.server.api.deps import Caller, HostAgent, State
from crucible.server.api.responses import model_response
from crucible.server.services import access_handoff as handoff
from crucible.server.services import hosts as svc
from crucible.server.services.pods import disks_to_prune
from crucible.server.store.db import WriteRefused, connection_at_hand
from crucible.server.wakeups import RECHECK_S

router = APIRouter(prefix="/v1/hosts", tags=["hosts"])
log = logging.getLogger("crucible.hosts")

# A sync's applied reports: (containers the agent must stop, wake-up keys, whether the
# report is fresh, its sequence key); and what the store holds for the host: (containers
# to start, to stop, their stop grace).
_Applied = tuple[list[str], list[str], bool, str]
_Commands = tuple[list[ContainerAssignment], list[str], dict[str, float]]


@router.post("/register")
async def register(req: HostRegister, who: HostAgent, state: State) -> HostInfo:
    def write() -> HostInfo:
        # In a worker thread: a fleet registering at once must not stall the event loop
        # (and with it every other agent's sync) on the store.
        # The hosts' last heartbeats first: a new agent process's predecessor is billed up to
        # when it was last heard from (register_host).
        with state.engine.begin() as conn:
            svc.flush_heartbeats(conn, state.hosts.heartbeats)
        with state.engine.begin() as conn:
            return svc.register_host(
                conn, who, req, state.clock.now_ms(), allow_fake_gpus=state.settings.dev_mode
            )

    # A few at a time: when a whole fleet registers at once (a restart of the exchange),
    # registrations waiting on the store would otherwise take every worker thread, and the
    # syncs of the hosts already registered would wait behind them until the hosts were
    # declared lost.
    async with state.hosts.registrations:
        info = await run_in_threadpool(write)
    # A new agent process numbers its syncs from 1 again, under a new agent_session: the
    # previous processes' numbers are of no more use here.
    for key in [k for k in state.hosts.seq if k.startswith(f"{info.id}#")]:
        del state.hosts.seq[key]
    # Its isolation or verification may have changed: market reads sync before answering.
    state.market.offers_changed()
    state.wakeups.kick_scheduler()
    return info


@router.post("/{host_id}/sync")
async def sync(host_id: str, req: HostSync, who: HostAgent, state: State) -> HostSyncReply:
    """The agent's heartbeat and command channel (hosts only dial out). Applies the agent's
    container reports, then answers with containers to start and stop, at once when there
    are any, otherwise after up to ``wait_s``.

    Where the store is read and written: a write may wait for the scheduler's transaction,
    so it is made in a worker thread (the event loop serves the other agents meanwhile).
    On SQLite, a sync that carries nothing that must be written (no energy figure, exit or
    self-test: an idle host's) is first tried on the event loop with writes refused
    (store/db.read_only), since WAL reads wait for no writer and the hop to a thread
    cost more than the reads; should it turn out to write (a container started, or gone),
    it is rolled back and applied in a worker thread. Only while the pool has a connection
    at hand (store/db.connection_at_hand): waiting for one on the loop would stall every
    request. On PostgreSQL every sync uses a worker thread: each read is a round trip that
    would hold up the loop.

    An idle sync reads the store once: the heartbeat is written later with other hosts'
    (server/heartbeats.py), and while it waits the sync looks again only when woken for its
    host, or every ``RECHECK_S`` in a long wait; the next sync looks first thing anyway."""
    s = state.settings
    known = {c.container_id for c in req.containers}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + req.wait_s
    sqlite = state.engine.dialect.name == "sqlite"

    def read_on_loop() -> bool:
        return sqlite and connection_at_hand(state.engine)

    always_writes = (
        req.leaving
        or req.self_test is not None
        or any(r.energy_mwh is not None or r.state == "exited" for r in req.containers)
    )

    def apply(read_only: bool) -> tuple[_Applied, _Commands]:
        now = state.clock.now_ms()
        with (state.read_engine if read_only else state.engine).begin() as conn:
            host = svc.host_for_sync(conn, who, host_id, req.agent_session)
            # Keyed by the agent process (its registration), not by what this replica saw
            # last: an agent that re-registered through another replica numbers its syncs
            # from 1.
            seq_key = f"{host_id}#{host.agent_session}"
            fresh = req.seq == 0 or req.seq > state.hosts.seq.get(seq_key, 0)
            stop, keys = svc.process_reports(
                conn,
                host_id,
                req.containers,
                now,
                fresh=fresh,
                max_infra_requeues=s.max_infra_requeues,
                meter_interval_ms=int(s.meter_interval_s * 1000),
                seq=req.seq,
                energy_readings_dropped=req.energy_readings_dropped,
                host=host,
                heartbeats=state.hosts.heartbeats,
            )
            if req.self_test is not None:  # a periodic self-test's fresh figures
                svc.apply_self_test(conn, host_id, None, req.self_test, now)
            if req.leaving and fresh:  # its agent stopped: place nothing more here
                keys += svc.host_left(
                    conn, host_id, now, s.max_infra_requeues, int(s.meter_interval_s * 1000)
                )
            # Read in the same connection and transaction, after the reports (which it
            # sees): one checkout per sync rather than two.
            found = svc.assignments_for_host(conn, host_id, state.secret, now)
        return (stop, keys, fresh, seq_key), found

    def flush_heartbeats() -> None:
        try:
            with state.engine.begin() as conn:
                svc.flush_heartbeats(conn, state.hosts.heartbeats)
        except SQLAlchemyError:
            # Kept for the next write (flush_heartbeats gives them back); this sync's own
            # reports are committed, and its agent is owed its answer.
            log.warning("writing hosts' heartbeats failed; retried", exc_info=True)

    async def apply_anywhere() -> tuple[_Applied, _Commands]:
        if not always_writes and read_on_loop():
            with contextlib.suppress(WriteRefused):
                return apply(read_only=True)
        return await run_in_threadpool(apply, False)

    def read_commands() -> _Commands:
        with state.engine.connect() as conn:
            return svc.assignments_for_host(conn, host_id, state.secret, state.clock.now_ms())

    def reply_of(found: _Commands, stop: list[str]) -> HostSyncReply | None:
        start, stopping, grace = found
        start = [a for a in start if a.container_id not in known]
        to_stop = sorted(set(stop) | {c for c in stopping if c in known})
        access = state.access.take_requests(host_id)
        if s.advertise_url:  # replicas: sessions opened on any of them (access_handoff)
            with state.engine.begin() as conn:
                access += handoff.take_requests(conn, host_id)
        if start or to_stop or access:
            return HostSyncReply(
                start=start,
                stop=to_stop,
                access=access,
                grace_s={c: g for c, g in grace.items() if c in to_stop},
                heartbeat_interval_s=s.heartbeat_interval_s,
            )
        return None

    # Listening before the first look: a wake-up that comes meanwhile is not missed.
    with state.wakeups.listen(f"host:{host_id}") as woken:
        (stop, keys, fresh, seq_key), found = await apply_anywhere()
        if state.hosts.heartbeats.due(state.clock.now_ms()):
            await run_in_threadpool(flush_heartbeats)
        if req.self_test is not None:
            state.market.offers_changed()
        if fresh and req.seq:
            state.hosts.seq[seq_key] = req.seq
        for report in req.containers:
            if report.state == "exited":  # its exec, tunnel and SSH sessions end with it
                state.access.end_container(report.container_id)
                state.web.relay.end_container(report.container_id)  # its relayed requests
                state.web.channels.close_container(report.container_id)
        state.wakeups.notify_many(keys)
        if keys or req.leaving:
            state.wakeups.kick_scheduler()
        reply = reply_of(found, stop)
        while reply is None:
            if not woken.is_set():  # nothing came since the store was read: wait
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), timeout=min(remaining, RECHECK_S))
                if not woken.is_set() and loop.time() >= deadline:
                    break  # nothing for it: its next sync looks first thing
            woken.clear()  # before the read: a wake-up during it is seen at the next turn
            found = read_commands() if read_on_loop() else await run_in_threadpool(read_commands)
            reply = reply_of(found, stop)
    reply = reply or HostSyncReply(heartbeat_interval_s=s.heartbeat_interval_s)
    # Serialized here, as the other hot routes do: server/hotpath.py serves this route
    # without the framework, hundreds of times a second on a large fleet. (Fields that are
    # None are left out; the agent's model reads them as their defaults, which are None.)
    return model_response(reply)  # type: ignore[return-value]


@router.post("/{host_id}/pod-disks")
async def pod_disks(host_id: str, req: PodDisks, who: HostAgent, state: State) -> PodDisksReply:
    """Which of the pod disks the agent holds it should remove (deleted pods, pods that never
    ran there or moved away); the agent asks every ``CRUCIBLE_POD_DISK_PRUNE_S``."""
    with state.engine.connect() as conn:
        svc.require_host(conn, who, host_id)
        return PodDisksReply(prune=disks_to_prune(conn, host_id, req.pod_ids))


@router.get("")
def list_hosts(who: Caller, state: State) -> list[HostInfo]:
    """Every host (in a worker thread: thousands of hosts take a while to list)."""
    with state.engine.connect() as conn:
        return svc.list_hosts(conn)
