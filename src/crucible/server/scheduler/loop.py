"""The imperative shell around the scheduler core: snapshot → plan → apply, on a timer and
whenever new work arrives. It also sweeps timeouts, loses silent hosts and meters containers.

Only one scheduler may run per store: replicas elect its leader through the store
(server/leadership.py), and every transaction this loop writes in starts with the leader's
fence, so a deposed leader's tick rolls back instead of committing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, bindparam, func, select

from crucible.core.autoscaler import Scale
from crucible.core.market import RefusalCode
from crucible.core.scheduling import (
    ContainerView,
    FunctionDemand,
    GpuChoice,
    HostCapacity,
    Plan,
    Policy,
    plan,
)
from crucible.errors import (
    ContainerExitedError,
    FunctionTimeoutError,
    InsufficientCreditError,
    MarketRefusedError,
    ResourcesUnsatisfiableError,
)
from crucible.protocol.common import ErrorInfo
from crucible.server.billing.entries import account_credit
from crucible.server.billing.grid_carbon import GridIntensity, parse_sources
from crucible.server.billing.service import meter_containers, record_grid_readings
from crucible.server.leadership import Deposed, fence
from crucible.server.scheduler.fleet_view import (
    CONTAINER_COLUMNS,
    FleetView,
    FunctionRow,
    HostUse,
    gpu_indices,
)
from crucible.server.services import request_keys
from crucible.server.services.apps import stop_abandoned_apps
from crucible.server.services.calls import (
    fail_queued_calls,
    record_timeout,
)
from crucible.server.services.clusters import (
    cluster_function_ids,
    has_active_clusters,
    place_clusters,
    record_cluster_env,
    settle_clusters,
)
from crucible.server.services.containers import (
    carry_out_advance,
    carry_out_preemptions,
    create_containers,
    request_stop,
    stop_for_market,
)
from crucible.server.services.crash_loops import CrashLoop, crash_loops, load_error
from crucible.server.services.deployments import retire_drained_versions
from crucible.server.services.function_specs import SPECS
from crucible.server.services.hosts import (
    end_container,
    flush_heartbeats,
    mark_lost_hosts,
    oldest_ready_sync,
)
from crucible.server.services.market import (
    HostRow,
    MarketPlacer,
    MarketTerms,
)
from crucible.server.services.named_objects import expire_idle
from crucible.server.services.pods import pod_homes, settle_pods
from crucible.server.services.retention import (
    Pruned,
    RetentionPolicy,
    collect_blobs,
    prune_apps,
    prune_calls,
    prune_intervals,
    prune_logs,
)
from crucible.server.services.schedules import fire_due_schedules
from crucible.server.services.secrets import drop_secrets_of_stopped_apps
from crucible.server.services.volumes import meter_volumes
from crucible.server.state import ServerState
from crucible.server.store.tables import (
    calls,
    containers,
    dict_entries,
    dicts,
    functions,
    queue_items,
    queues,
)

__all__ = ["WAITING_PREFIX", "SchedulerLoop", "tick_gap_s"]

# Wake-up keys that carry a change of why a function's work waits to the other replicas:
# "waiting=FUNCTION\tREASON" (an empty reason: it no longer waits).
WAITING_PREFIX = "waiting="

log = logging.getLogger("crucible.scheduler")

_MIN_TICK_GAP_S = 0.05
_TICK_GAP_FACTOR = 3.0
_MAX_TICK_GAP_S = 1.0


def tick_gap_s(last_took_s: float) -> float:
    """How long after a tick's start the next may start, when kicks ask for it sooner.

    At least :data:`_MIN_TICK_GAP_S`, and three times as long as that tick took (at most
    :data:`_MAX_TICK_GAP_S`): a busy exchange's tick pays its fixed chores for more
    placements at once, and the scheduler's thread takes at most about a third of the
    server's time from the requests (bench_fleet at 10,000 GPUs: a quarter less server CPU
    per placement). A small exchange's ticks take milliseconds: its gap stays the minimum.
    """
    return min(_MAX_TICK_GAP_S, max(_MIN_TICK_GAP_S, _TICK_GAP_FACTOR * last_took_s))


# Refusals that mean "busy now": the calls wait for capacity instead of failing.
_WAITING_REFUSALS = {RefusalCode.NO_CAPACITY.value, RefusalCode.TOO_LARGE.value}
# A host lost within this window may come back: requests it could run wait for it.
_KNOWN_HOST_WINDOW_MS = 3_600_000
_SETTLE_ALL_MS = 10_000  # every pod settled at least this often (else only changed ones)
_LOST_RECHECK_MS = 5_000  # hosts looked at for silence at least this often (see _lost_check_ms)
_HOUSEKEEPING_MS = 60_000  # slow chores (expiry of idle dicts and queues) once a minute
# Retention's share of each housekeeping: a backlog is worked off a bit every minute.
_RETENTION_BUDGET_S = 0.2
# Room made for queued work by stopping idle containers is kept for it this long at most.
_PROMISE_MS = 60_000
# Stopping containers past their stop deadline (services/containers.request_stop).
_OVERDUE = select(containers.c.id, containers.c.stop_by_ms).where(
    containers.c.state == "stopping",
    containers.c.stop_by_ms.is_not(None),
    containers.c.stop_by_ms < bindparam("b_now"),
)
_NOT_STARTED = ("pending", "starting")  # replaced when not ready within the start timeout


class SchedulerLoop:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # The leader's fencing epoch (server/leadership.py); None when nothing elects this
        # loop (a test driving tick() by hand): its transactions are then not fenced.
        self.epoch: int | None = None
        self._last_meter_ms = 0
        self._last_housekeeping_ms = 0
        self._blob_cursor = ""  # blob collection sweeps the blobs in hash order, in batches
        self._scales: dict[str, int] = {}  # last logged autoscaler answer per function
        self.crash_loops: dict[str, CrashLoop] = {}
        self._loop_logged: dict[str, int] = {}
        s = state.settings
        self.grid = GridIntensity(
            parse_sources(s.carbon_sources), max(1, int(s.carbon_refresh_s * 1000))
        )
        # Functions idle containers were stopped for: until when the room stays theirs, and
        # how many of their containers were ready then (a new one ready uses the room).
        self._promised: dict[str, tuple[int, int]] = {}
        self._shared_waiting: dict[str, str] = {}  # as last told to the other replicas
        # Functions the last plans had nothing to do for (no work, every container wanted,
        # none starting late): function -> (what the store showed of it, when that stops
        # holding). While its rows read the same, a tick leaves it out of the plan
        # (_demands): the tick's cost follows the functions that changed, not every running
        # pod. Derived from the store's rows each tick, so another replica's change to one
        # of them (a call, a container, a redeploy, its app stopped) is seen at once.
        self._settled: dict[str, tuple[tuple[Any, ...], float]] = {}
        # No entry of _settled holds past this time (at most the earliest one's end): until
        # then no tick needs to look for entries that ended.
        self._settled_until = math.inf
        # This tick's (rows, due) of the planned functions that had no work.
        self._signatures: dict[str, tuple[tuple[Any, ...], float]] = {}
        self._skipped: set[str] = set()  # left out of this tick's plan as settled
        # Hosts and live containers, kept across ticks and updated from what changed.
        self.fleet = FleetView()
        # Pods were settled with every container change up to this change number in view
        # (settle_pods: a tick then looks only at pods whose containers changed since);
        # None: look at every pod. Every pod is looked at every _SETTLE_ALL_MS regardless.
        self._pods_settled_upto: int | None = None
        # No ready host can have been silent for the host timeout before this time: the
        # oldest last sync of a ready host, at the last look, plus the timeout (a host's
        # last sync only moves forward, and a host becomes ready only with a sync of now).
        # Until then a tick does not read every host's row to find silent ones; it looks at
        # least every _LOST_RECHECK_MS anyway (a store edited by hand, replicas' clocks).
        self._lost_check_ms = -math.inf
        self._pods_all_ms = 0
        # Since when this scheduler has had the store (its first tick, or the first after a
        # failed one): hosts could not reach an exchange that was down or cut off from its
        # store, so their silence counts from here (a 20 s restart lost every host).
        self._heard_since_ms: int | None = None

    @property
    def policy(self) -> Policy:
        s = self.state.settings
        return Policy(
            unschedulable_grace_ms=int(s.unschedulable_grace_s * 1000),
            container_start_timeout_ms=int(s.container_start_timeout_s * 1000),
        )

    def start(self, epoch: int | None = None) -> None:
        """Run the loop, fenced by ``epoch`` when given (the elector passes its own)."""
        self.epoch = epoch
        self._stopping = False
        self._settled = {}  # a new term decides everything afresh
        self.fleet.invalidate()  # and reads the whole fleet afresh
        self._pods_settled_upto = None  # and settles every pod
        if epoch is not None:
            # Elected: decide on the store's market, not on a follower's stale view.
            self.state.market.reload()
            self.state.market.leading = True
        self._task = asyncio.get_running_loop().create_task(self._run(), name="scheduler")

    @property
    def left_out(self) -> frozenset[str]:
        """Functions the last tick left out of its plan as settled (nothing had changed)."""
        return frozenset(self._skipped)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        self._stopping = True
        self.state.wakeups.scheduler.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self.epoch is not None:
            self.state.market.leading = False
            # What only the leader keeps current: a follower must not refuse submissions on
            # a deposed leader's old word (its own ledger check applies instead).
            self.state.leader.credit_blocked = {}
            self.state.leader.waiting = {}

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A write transaction of the leader: fenced first, so it commits only while this
        replica's epoch still leads (else :class:`Deposed` rolls it back)."""
        with self.state.engine.begin() as conn:
            if self.epoch is not None:
                fence(conn, self.epoch)
            yield conn

    def _fence(self, conn: Connection) -> None:
        if self.epoch is not None:
            fence(conn, self.epoch)

    async def _run(self) -> None:
        kick = self.state.wakeups.scheduler
        interval = self.state.settings.scheduler_interval_s
        loop = asyncio.get_running_loop()
        last_tick = last_took = 0.0
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(kick.wait(), timeout=interval)
            kick.clear()
            if self._stopping:
                break
            # Kicks come with every new call and report: coalesced (tick_gap_s); the first
            # call of an idle function still gets an immediate tick.
            since = loop.time() - last_tick
            gap = tick_gap_s(last_took)
            if since < gap:
                await asyncio.sleep(gap - since)
            last_tick = loop.time()
            try:
                # In a worker thread: a tick over a large fleet takes long enough that running
                # it on the event loop would stall every request meanwhile.
                keys = await asyncio.to_thread(self.tick)
                last_took = loop.time() - last_tick
                self.state.wakeups.notify_many(set(keys))
                self._share_waiting()
            except Deposed as exc:
                # Another replica leads now: nothing of this tick was committed, and the
                # elector stops (or later restarts) this loop.
                log.warning("scheduler stopped: %s", exc)
                break
            except Exception:
                # The loop must outlive one bad tick (e.g. the database briefly away).
                log.exception("scheduler tick failed")
                await asyncio.sleep(min(1.0, interval * 4))

    # -- one tick ---------------------------------------------------------------------------
    def tick(self) -> list[str]:
        """Run one scheduling round; returns wake-up keys to notify (after commit)."""
        try:
            return self._tick()
        except BaseException:
            # In doubt (deposed, the database away, a bug): the next tick reads the whole
            # fleet again rather than trust what this one may have half taken in.
            self.fleet.invalidate()
            self._lost_check_ms = -math.inf
            self._heard_since_ms = None
            raise

    def _tick(self) -> list[str]:
        st = self.state
        s = st.settings
        now = st.clock.now_ms()
        keys: list[str] = []
        live = st.market
        # The chores before the snapshot commit on their own: on SQLite a transaction holds
        # the store's write lock from its first write, and settling pods writes in most
        # ticks of a busy exchange, so one transaction for the whole tick held every pod
        # submission and agent report back through the whole placement.
        with self._begin() as conn:
            # Syncs' heartbeats are written in batches: those seen here count before any
            # host is declared lost or any container metered up to its host's last sync.
            flush_heartbeats(conn, st.hosts.heartbeats)
            if self._heard_since_ms is None:
                self._heard_since_ms = now
            timeout_ms = int(s.host_timeout_s * 1000)
            if now >= self._lost_check_ms and now - timeout_ms > self._heard_since_ms:
                oldest = oldest_ready_sync(conn)
                if oldest is not None and oldest < now - timeout_ms:  # some host is lost
                    keys += mark_lost_hosts(
                        conn,
                        now,
                        timeout_ms,
                        s.max_infra_requeues,
                        int(s.meter_interval_s * 1000),
                    )
                    oldest = oldest_ready_sync(conn)
                self._lost_check_ms = min(  # lost once *more* than the timeout silent
                    now + _LOST_RECHECK_MS, (now if oldest is None else oldest) + timeout_ms + 1
                )
            for app_id in stop_abandoned_apps(conn, now, int(s.app_heartbeat_timeout_s * 1000)):
                log.warning("stopped app %s: its client stopped heartbeating", app_id)
            keys += self._sweep_timeouts(conn, now)
            keys += self._end_overdue_stops(conn, now)
            for app_id in retire_drained_versions(conn, now):
                log.info("stopped app %s: a superseded version with no calls left", app_id)
            keys += fire_due_schedules(conn, now, s.inline_payload_max_bytes)
            # Before the snapshot: a pod whose container is going away must not be restarted,
            # and a cluster with a member going away goes as a whole.
            keys += settle_clusters(conn, now)
            upto = self.fleet.containers_seen(conn)  # before the pods are read
            since = self._pods_settled_upto
            if upto is None or now - self._pods_all_ms >= _SETTLE_ALL_MS:
                since = None
            keys += settle_pods(conn, now, since)
        self._pods_settled_upto = upto  # committed
        if since is None:
            self._pods_all_ms = now
        fleet = self.fleet
        barrier = fleet.barrier(st.engine)
        with self._begin() as conn:
            # Snapshots first; the market's lock is held only while the market is used, so
            # quotes and reservations wait for the placement, not for the whole tick.
            # Hosts and live containers: the view kept across ticks, brought up to date with
            # what changed since the last tick (scheduler/fleet_view.py).
            fleet.refresh(conn, live, now, barrier)
            for fid, start_ms in fleet.take_started():  # how long containers take to start
                self.state.observations.observe_start(fid, start_ms)
            host_rows = list(fleet.hosts.values())
            demands, accounts, terms = self._demands(conn, now)
            # The tick's time from here: after the read of the queue, so that no call it saw
            # was made later than a container it starts for it (a call committed while the
            # chores ran would otherwise look as if it found that container already there).
            now = max(now, st.clock.now_ms())
            # A quiet tick (nothing to plan, no gang to place) needs no host's capacity.
            if demands or has_active_clusters(conn):
                capacity, known = self._capacity(now, host_rows)
            else:
                capacity, known = [], []
            with live.lock:
                # The market: in step with hosts, offers and containers; due window events.
                live.sync(conn, now, host_rows, fleet.take_changed_hosts())
                live.reconcile(fleet.lease_ids, now)
                now = max(now, live.market.now_ms)
                keys += carry_out_advance(conn, live.market.advance(now), now)
                if s.require_credits:
                    keys += self._enforce_credit(conn, now)
                # An account without credit runs only what it paid for up front: functions of
                # the reserved tier, inside its reservations.
                demands = [
                    d
                    for d in demands
                    if accounts.get(d.id) not in st.leader.credit_blocked
                    or terms[d.id].tier == "reserved"
                ]
                placer = MarketPlacer(live, accounts, terms, now, held=fleet.held_by)
                decided = plan(
                    now,
                    demands,
                    capacity,
                    self.policy,
                    known,
                    gpu_placer=placer,
                    promised=self._promise(now, demands),
                )
                self._keep_promises(decided.made_room, demands, now)
                self._note_settled(demands, decided, placer)
                # Clusters: each gang in one market decision, on what the plan left.
                gangs = place_clusters(conn, live, capacity, now)
            self._log_scales(decided.scales)
            self._publish_waiting(decided.waiting, placer)
            # Why pods (functions with no calls) wait: the market's own words.
            refused = {
                fid: f"the market: {why.message}"
                for fid, why in placer.refused.items()
                if fid not in self.state.leader.waiting
            }
            if gangs.waiting or refused:
                view = self.state.leader
                view.waiting = {**view.waiting, **refused, **gangs.waiting}
            for u in decided.unschedulable:
                log.warning("function %s unschedulable: %s", u.function_id, u.message)
                keys += fail_queued_calls(
                    conn, u.function_id, ResourcesUnsatisfiableError.code, u.message, now
                )
            keys += self._refused(conn, demands, placer, now)
            keys += self._fail_crash_loops(conn, demands, now)
            keys += create_containers(
                conn, decided.start, accounts, live.cpu_offer, round(s.platform_fee * 1e6), now
            )
            keys += carry_out_preemptions(conn, placer.preemptions)
            if gangs.starts:
                log.info("placing %d cluster member(s)", len(gangs.starts))
                record_cluster_env(conn, gangs.env, gangs.nets)
                keys += create_containers(
                    conn,
                    gangs.starts,
                    gangs.accounts,
                    live.cpu_offer,
                    round(s.platform_fee * 1e6),
                    now,
                )
                keys += carry_out_preemptions(conn, gangs.preemptions)
            for stop in decided.stop:
                log.info("stopping container %s (%s)", stop.container_id, stop.reason)
                keys += request_stop(conn, stop.container_id, now)
            if decided.start:
                log.info(
                    "starting %d container(s): %s",
                    len(decided.start),
                    ", ".join(f"{x.function_id}@{x.host_id}" for x in decided.start),
                )
        if now - self._last_housekeeping_ms >= _HOUSEKEEPING_MS:
            self._housekeeping_now()
        if now - self._last_meter_ms >= 1000:
            # Grid carbon sources are files or HTTP: read outside any transaction.
            readings = self.grid.read(now) if self.grid.due(now) else None
            # Its own transaction: metering is idempotent, and a long one (many containers
            # due at once) should not hold back the placements above.
            with self._begin() as conn:
                if readings is not None:
                    record_grid_readings(conn, readings)
                meter_containers(conn, now, int(s.meter_interval_s * 1000))
            self._last_meter_ms = now
        return keys

    def _housekeeping_now(self) -> None:
        """Slow chores, once a minute: volumes' storage is charged; secrets of stopped apps
        (Secret.from_dict) go; idle dicts and queues expire; retention prunes what is old."""
        now = self.state.clock.now_ms()
        with self._begin() as conn:
            self._housekeeping(conn, now)
        self.retention(now)
        self._last_housekeeping_ms = now

    def retention(self, now: int, budget_s: float = _RETENTION_BUDGET_S) -> Pruned:
        """Old calls, log lines and metered intervals go, then stopped apps nothing kept
        names any more (with their functions), and unreferenced blobs are collected
        (services/retention.py): batches of ``retention_batch_rows``, each in its own
        transaction, taking turns until nothing old is left or ``budget_s`` is spent (the
        rest waits for the next housekeeping), so a backlog never stalls scheduling."""
        s = self.state.settings
        policy = RetentionPolicy.at(
            now,
            calls_days=s.retention_calls_days,
            logs_days=s.retention_logs_days,
            meter_days=s.retention_meter_days,
            blob_grace_hours=s.blob_gc_grace_hours,
            batch=s.retention_batch_rows,
        )
        work: dict[str, tuple[int, Callable[[Connection, int, int], Pruned]]] = {}
        if policy.calls_before_ms is not None:
            work["calls"] = (policy.calls_before_ms, prune_calls)
        if policy.logs_before_ms is not None:
            work["logs"] = (policy.logs_before_ms, prune_logs)
        if policy.meter_before_ms is not None:
            work["intervals"] = (policy.meter_before_ms, prune_intervals)
        if policy.apps_before_ms is not None:
            work["apps"] = (policy.apps_before_ms, prune_apps)
        deadline = time.monotonic() + budget_s
        done = Pruned()
        while work and time.monotonic() < deadline:
            for kind, (before, prune) in list(work.items()):
                with self._begin() as conn:
                    got = prune(conn, before, policy.batch)
                done.add(got)
                if kind not in got.more:
                    del work[kind]
        if policy.blobs_before_ms is not None:
            while time.monotonic() < deadline:
                got, self._blob_cursor = collect_blobs(
                    self.state.engine,
                    self.state.blobs,
                    policy.blobs_before_ms,
                    policy.batch,
                    self._blob_cursor,
                    fence=self._fence,
                )
                done.add(got)
                if not self._blob_cursor:
                    break  # one sweep to the end per housekeeping at most
        if done.total:
            log.info(
                "retention deleted %d call(s), %d item(s), %d log line(s), %d metered "
                "interval(s), the %d function(s) and %d container(s) of %d stopped app(s), "
                "%d blob(s) (%d bytes)",
                done.calls,
                done.items,
                done.logs,
                done.intervals,
                done.functions,
                done.containers,
                done.apps,
                done.blobs,
                done.blob_bytes,
            )
        return done

    def _housekeeping(self, conn: Connection, now: int) -> None:
        s = self.state.settings
        meter_volumes(
            conn,
            now,
            int(s.volume_meter_interval_s * 1000),
            round(s.volume_price_gib_month_usd * 1_000_000),
        )
        request_keys.prune(conn, now)
        dropped = drop_secrets_of_stopped_apps(conn)
        if dropped:
            log.info("deleted %d secret(s) of stopped apps", dropped)
        days = s.coordination_idle_expiry_days
        if days > 0:
            before = now - int(days * 86_400_000)
            expired = expire_idle(conn, dicts, dict_entries, "dict_id", before) + expire_idle(
                conn, queues, queue_items, "queue_id", before
            )
            if expired:
                log.info("deleted %d dict(s)/queue(s) idle for %g days", expired, days)

    def _enforce_credit(self, conn: Connection, now: int) -> list[str]:
        """Accounts at zero balance or past their daily cap get no new work: their queued
        calls fail with insufficient_credit and their running containers are drained (their
        leases end now). Accounts granted credit again are let back in. What they paid for up
        front goes on: containers inside their reservations keep running, and the calls of
        their reserved-tier functions stay queued for them."""
        st = self.state
        active = {
            r.account_id
            for r in conn.execute(
                select(calls.c.account_id)
                .where(calls.c.state.in_(("queued", "running")))
                .distinct()
            )
        } | {
            r.account_id
            for r in conn.execute(
                select(containers.c.account_id)
                .where(containers.c.state.in_(("pending", "starting", "running")))
                .distinct()
            )
        }
        keys: list[str] = []
        blocked: dict[str, str] = {}
        for account in sorted(active | set(st.leader.credit_blocked)):
            status = account_credit(conn, account, now)
            if status.ok:
                continue
            blocked[account] = status.reason
            if account not in st.leader.credit_blocked:
                log.warning("account %s refused new work: %s", account, status.reason)
            for lease in st.market.market.end_account(account, now):
                keys += stop_for_market(conn, lease.lease_id, now, "out_of_credit", None)
            for r in conn.execute(
                select(containers.c.id).where(
                    containers.c.account_id == account,
                    containers.c.state.in_(("pending", "starting", "running")),
                    containers.c.reservation_id.is_(None),
                )
            ):
                keys += stop_for_market(conn, r.id, now, "out_of_credit", None)
            for r in conn.execute(
                select(calls.c.function_id)
                .where(calls.c.account_id == account, calls.c.state == "queued")
                .distinct()
            ):
                if _reserved_tier(conn, r.function_id):
                    continue
                keys += fail_queued_calls(
                    conn, r.function_id, InsufficientCreditError.code, status.reason, now
                )
        st.leader.credit_blocked = blocked  # one assignment: readers see the old or the new set
        return keys

    def _refused(
        self, conn: Connection, demands: list[FunctionDemand], placer: MarketPlacer, now: int
    ) -> list[str]:
        """Queued calls of a function the market refused for a reason waiting will not fix
        (price, bid, region, reliability, no reservation) fail after the unschedulable
        grace, with the market's own words. Busy capacity just waits."""
        grace = int(self.state.settings.unschedulable_grace_s * 1000)
        keys: list[str] = []
        for d in demands:
            why = placer.refused.get(d.id)
            if why is None or why.code in _WAITING_REFUSALS or not d.queued:
                continue
            if d.oldest_queued_ms is not None and now - d.oldest_queued_ms >= grace:
                log.warning("function %s refused by the market: %s", d.id, why.message)
                keys += fail_queued_calls(conn, d.id, MarketRefusedError.code, why.message, now)
        return keys

    def _fail_crash_loops(
        self, conn: Connection, demands: list[FunctionDemand], now: int
    ) -> list[str]:
        """A function whose containers keep exiting before they become ready is crash-
        looping, which is not the same as waiting for capacity: it is retried with backoff,
        and once it has failed ``crash_loop_limit`` times in a row its queued calls fail with
        the last container's own words."""
        keys: list[str] = []
        for d in demands:
            loop = self.crash_loops.get(d.id)
            if loop is None:
                continue
            if self._loop_logged.get(d.id) != loop.crashes:
                self._loop_logged[d.id] = loop.crashes
                log.warning(
                    "function %s is crash-looping: %s; next container in %.0f s",
                    d.id,
                    loop.describe(),
                    max(0, loop.retry_at_ms - now) / 1000,
                )
            if loop.crashes >= self.state.settings.crash_loop_limit and d.queued:
                message = f"crash loop: {loop.describe()}"
                # A function that cannot load fails the calls left with the user's own
                # error, as the calls its containers were given failed.
                error = load_error(conn, d.id, now)
                if error is not None:
                    error.message = f"{error.message} ({message})"[-10_000:]
                keys += fail_queued_calls(
                    conn, d.id, ContainerExitedError.code, message, now, error=error
                )
        return keys

    def _promise(self, now: int, demands: list[FunctionDemand]) -> set[str]:
        """The functions room was made for that have not used it yet: calls still queued and
        no container of theirs ready since. A promise is kept until then, not only until a
        container is started for them: one that ends before it is ready (lost with its host,
        failed to start) would otherwise leave the room to another account's older work. A
        minute at most: the stops it waited for are long done by then."""
        kept: dict[str, tuple[int, int]] = {}
        for d in demands:
            promise = self._promised.get(d.id)
            if promise is not None and promise[0] > now and d.queued and _ready(d) <= promise[1]:
                kept[d.id] = promise
        self._promised = kept
        return set(kept)

    def _keep_promises(self, made_room: set[str], demands: list[FunctionDemand], now: int) -> None:
        """Room made by stopping idle containers is promised to the function it was made for
        (see :meth:`_promise`)."""
        for d in demands:
            if d.id in made_room:
                self._promised[d.id] = (now + _PROMISE_MS, _ready(d))

    def _share_waiting(self) -> None:
        """Tell the other replicas what changed in why calls wait (pods, clusters and
        queued calls read through them show it too); nothing in one process."""
        wakeups = self.state.wakeups
        if wakeups.publish is None:
            return
        now, before = self.state.leader.waiting, self._shared_waiting
        for fid, why in now.items():
            if before.get(fid) != why:
                wakeups.share(WAITING_PREFIX, f"{fid}\t{' '.join(why.split())}")
        for fid in before.keys() - now.keys():
            wakeups.share(WAITING_PREFIX, f"{fid}\t")
        self._shared_waiting = now

    def _publish_waiting(self, waiting: dict[str, str], placer: MarketPlacer) -> None:
        """Why queued calls wait, for their CallInfo: the core's reason, or the market's own
        words when it refused a GPU function. Logged when a function's reason changes."""
        out = {}
        for fid, why in waiting.items():
            refused = placer.refused.get(fid)
            # The market's words are more precise than "busy", not than "no live host".
            busy = why.startswith("every live host") and "being stopped" not in why
            out[fid] = f"the market: {refused.message}" if refused and busy else why
            if self.state.leader.waiting.get(fid) != out[fid]:
                log.info("function %s waits: %s", fid, out[fid])
        self.state.leader.waiting = out  # one assignment: readers see the old or the new map

    def _note_settled(
        self, demands: list[FunctionDemand], decided: Plan, placer: MarketPlacer
    ) -> None:
        """Functions this plan had nothing to do for (no work, as many containers as the
        autoscaler wants, nothing started, stopped, waiting or refused) are left out of the
        next plans while the store shows them the same (see ``_settled``)."""
        touched = {x.function_id for x in decided.start} | set(decided.waiting)
        touched |= {u.function_id for u in decided.unschedulable} | decided.made_room
        touched |= set(placer.refused) | set(self.crash_loops)
        stops = {x.container_id for x in decided.stop}
        for d in demands:
            seen = self._signatures.get(d.id)
            scale = decided.scales.get(d.id)
            if (
                seen is None
                or scale is None
                or d.queued
                or d.running
                or d.arrivals_per_s > 0
                or not d.active
                or d.id in touched
                or scale.containers != len(d.containers)
                or any(c.id in stops for c in d.containers)
            ):
                continue
            self._settled[d.id] = seen
            self._settled_until = min(self._settled_until, seen[1])

    def _log_scales(self, scales: dict[str, Scale]) -> None:
        """The autoscaler's decisions, explained, each time a function's number changes."""
        for fid, scale in scales.items():
            if self._scales.get(fid) != scale.containers:
                log.info(
                    "function %s wants %d container(s): %s", fid, scale.containers, scale.reason
                )
                self._scales[fid] = scale.containers
        for fid in self._scales.keys() - scales.keys() - self._skipped:
            del self._scales[fid]

    def _sweep_timeouts(self, conn: Connection, now: int) -> list[str]:
        """Backstop for calls the worker could not interrupt (stuck in C code, or the worker
        is gone silent): past deadline + grace, the attempt times out and the container is
        stopped."""
        grace = int(self.state.settings.timeout_grace_s * 1000)
        rows = conn.execute(
            select(calls.c.id, calls.c.container_id, calls.c.function_id, functions.c.spec_rev)
            .join(functions, functions.c.id == calls.c.function_id)
            .where(calls.c.state == "running", calls.c.deadline_ms < now - grace)
        ).all()
        keys: list[str] = []
        for r in rows:
            timeout_s = SPECS.at(conn, r.function_id, r.spec_rev).spec.timeout_s
            err = ErrorInfo(
                code=FunctionTimeoutError.code,
                message=f"the call ran past its timeout of {timeout_s:g} s (it could not be "
                "interrupted where it was, in C code or a concurrent input) and its container "
                "was stopped",
            )
            keys += record_timeout(conn, r.id, err, now)
            if r.container_id:
                keys += request_stop(conn, r.container_id, now)
        return keys

    def _end_overdue_stops(self, conn: Connection, now: int) -> list[str]:
        """Containers asked to stop whose host has not said they stopped by their deadline
        (the grace and an allowance past the ask) end now, as lost, at that deadline: their
        calls go back to the queue, their GPUs to the market, and their container tokens
        stop working (a host that answered every stop with "running" kept the container,
        and its token's access to the account's objects, for ever; billing ended at the
        deadline already). The agent is told to stop it at its next sync, as any container
        it runs that has ended."""
        s = self.state.settings
        keys: list[str] = []
        for r in conn.execute(_OVERDUE, {"b_now": now}).all():
            keys += end_container(
                conn,
                r.id,
                now,
                exit_code=None,
                reason="lost",
                message="its host did not report it stopped by its stop deadline",
                crashed=False,
                max_infra_requeues=s.max_infra_requeues,
                meter_interval_ms=int(s.meter_interval_s * 1000),
                stopped_ms=r.stop_by_ms,
            )
        return keys

    def _demands(
        self, conn: Connection, now: int
    ) -> tuple[list[FunctionDemand], dict[str, str], dict[str, MarketTerms]]:
        work: dict[str, dict[str, Any]] = defaultdict(dict)
        for w in conn.execute(
            select(
                calls.c.function_id,
                calls.c.state,
                func.count().label("n"),
                func.min(calls.c.created_ms).label("oldest"),
                func.min(calls.c.started_ms).label("oldest_start"),
            )
            .where(calls.c.state.in_(("queued", "running")))
            .group_by(calls.c.function_id, calls.c.state)
        ):
            work[w.function_id][w.state] = w
        busy = {
            r.container_id
            for r in conn.execute(
                select(calls.c.container_id).where(calls.c.state == "running").distinct()
            )
        }
        # Web requests relayed in memory (server/web_relay.py) are running calls without rows.
        relayed = self.state.web.relay.in_flight()
        busy |= self.state.web.relay.busy()
        # Each function's live containers but those stopping: kept by the fleet view.
        by_fn = self.fleet.by_function
        start_timeout_ms = self.policy.container_start_timeout_ms
        # Functions that keep warm containers count even with no calls and no containers
        # (kept by the fleet view, followed by functions' and apps' changes).
        warm = self.fleet.warm
        # Cluster members are placed as gangs (services/clusters.py), not one by one.
        fids = (set(work) | set(relayed) | set(by_fn) | warm) - cluster_function_ids(conn)
        self._signatures, self._skipped = {}, set()
        # Over every function the exchange holds, each tick: set operations (run in C),
        # not a Python test per function.
        for gone in self._settled.keys() - fids:
            del self._settled[gone]
        if now >= self._settled_until:  # an entry ended (a container's start timeout is due)
            for ended in [f for f, (_sig, until) in self._settled.items() if now >= until]:
                del self._settled[ended]  # as if never settled: it is planned again
            self._settled_until = min((v[1] for v in self._settled.values()), default=math.inf)
        changed = self.fleet.take_changed()  # None: every function
        if not fids:
            return [], {}, {}
        s = self.state.settings
        demands: list[FunctionDemand] = []
        accounts: dict[str, str] = {}
        terms: dict[str, MarketTerms] = {}
        settled, skipped, promised = self._settled, self._skipped, self._promised
        # A settled function with no work, nothing of which changed since the last tick (its
        # containers, its row, its app: the view says), reads the same as when it settled:
        # left out without reading it. Its containers are not busy (it had nothing running
        # when it settled, and a call or a relayed request since puts it in the work).
        if changed is not None and settled:
            # Every entry left holds now (those that ended were dropped above).
            skipped.update((fids & settled.keys()).difference(changed, work, relayed, promised))
            fids -= skipped
        # Kept by the view across ticks: read only for functions it has not seen.
        rows = self.fleet.functions_of(conn, fids)
        planned: list[FunctionRow] = []
        for r in rows:  # every function with live containers: locals only
            fid, account_id, spec_rev, app_state = r
            if fid in work or fid in relayed or fid in promised:
                planned.append(r)
                continue
            group = by_fn.get(fid)
            cs = group.values() if group is not None else ()
            sig = (
                spec_rev,
                app_state,
                account_id,
                # Rows come in any order: sorted (most functions have one container).
                *(
                    sorted((c[_ID], c[_STATE], c[_ID] in busy) for c in cs)
                    if len(cs) > 1
                    else [(c[_ID], c[_STATE], c[_ID] in busy) for c in cs]
                ),
            )
            last = settled.get(fid)
            if last is not None and last[0] == sig and now < last[1]:
                skipped.add(fid)
                continue
            # Until a container that has not started yet would be replaced (start timeout).
            due = min(
                (c.created_ms + start_timeout_ms for c in cs if c.state in _NOT_STARTED),
                default=float("inf"),
            )
            self._settled.pop(r.id, None)
            self._signatures[r.id] = (sig, due)
            planned.append(r)
        rows = planned
        loops = crash_loops(conn, {r.id for r in rows}, now)
        # Each spec is parsed once per version (services/function_specs.py): a tick reads the
        # JSON only of functions it has not seen at their current version.
        specs = SPECS.get_many(conn, {r.id: r.spec_rev for r in rows})
        homes = pod_homes(conn, [fid for fid, parsed in specs.items() if parsed.pod])
        for r in rows:
            parsed = specs.get(r.id)
            if parsed is None:  # deleted between the two reads
                continue
            spec = parsed.spec
            queued = work[r.id].get("queued")
            running = work[r.id].get("running")
            res = spec.resources
            accounts[r.id] = r.account_id
            terms[r.id] = parsed.terms
            window = spec.scaledown_window_s
            demands.append(
                FunctionDemand(
                    id=r.id,
                    cpu=res.cpu,
                    memory_mib=res.memory_mib,
                    gpus=tuple(GpuChoice(g.model, g.count) for g in res.gpus),
                    disk_mib=res.disk_mib,
                    queued=queued.n if queued else 0,
                    running=(running.n if running else 0) + relayed.get(r.id, 0),
                    oldest_queued_ms=queued.oldest if queued else None,
                    oldest_running_started_ms=running.oldest_start if running else None,
                    avg_exec_ms=self.state.observations.exec_stats.get(r.id),
                    containers=tuple(
                        ContainerView(
                            id=c.id,
                            host_id=c.host_id,
                            state=c.state,
                            created_ms=c.created_ms,
                            last_active_ms=c.last_active_ms,
                            busy=c.id in busy,
                            cpu=c.cpu,
                            memory_mib=c.memory_mib,
                            gpu_indices=gpu_indices(c.gpu_indices_text),
                        )
                        for c in by_fn.get(r.id, {}).values()
                    ),
                    max_containers=spec.max_containers or s.max_containers,
                    scaledown_window_ms=int(
                        (window if window is not None else s.scaledown_window_s) * 1000
                    ),
                    # A retiring version (superseded by a redeploy) still serves its calls.
                    active=r.app_state in ("running", "retiring"),
                    min_containers=spec.min_containers if r.app_state == "running" else 0,
                    buffer_containers=spec.buffer_containers if r.app_state == "running" else 0,
                    arrivals_per_s=self._arrivals(r.id, now),
                    inputs_per_container=spec.target_inputs
                    or spec.max_inputs * spec.max_batch_size,
                    start_not_before_ms=loops[r.id].retry_at_ms if r.id in loops else 0,
                    start_ms=self.state.observations.start_stats.get(r.id, 0.0),
                    account_id=r.account_id,
                    verified=terms[r.id].verified,
                    region=terms[r.id].region,
                    network=bool(spec.network),
                    noun="pod" if parsed.pod else "function",
                    home_host=homes.get(r.id),
                )
            )
        demands.sort(key=lambda d: d.oldest_queued_ms or now)  # oldest work first
        self.crash_loops = loops
        return demands, accounts, terms

    def _arrivals(self, function_id: str, now: int) -> float:
        rate = self.state.observations.arrivals.get(function_id)
        return 0.0 if rate is None else rate.per_s(now)

    def _capacity(
        self, now: int, host_rows: list[HostRow]
    ) -> tuple[list[HostCapacity], list[HostCapacity]]:
        """Live hosts with their usage (what the fleet view counts their live containers
        hold), and every host seen within the last hour (for deciding whether a request
        could ever be met)."""
        # A ready host was seen within the host timeout (lost hosts are marked before the
        # snapshot); the view's last_seen_ms is as of the host's last change, not its last
        # heartbeat, which matters only for hosts no longer heartbeating (lost ones).
        rows = [
            h
            for h in host_rows
            if h.row.state == "ready"
            or (h.row.state != "removed" and h.row.last_seen_ms >= now - _KNOWN_HOST_WINDOW_MS)
        ]
        usage, freeing = self.fleet.held, self.fleet.freeing
        live: list[HostCapacity] = []
        known: list[HostCapacity] = []
        for h in rows:
            inv = h.inventory
            u = usage.get(h.row.id, _NO_USE) if h.row.state == "ready" else _NO_USE
            cap = HostCapacity(
                id=h.row.id,
                cpu=float(inv["cpu_cores"]),
                memory_mib=int(inv["memory_mib"]),
                disk_mib=int(inv.get("disk_mib", 0)),
                gpus=h.devices.gpus,
                used_cpu=u.cpu,
                used_memory_mib=u.memory_mib,
                used_gpus=set(u.gpus),
                owner=h.row.account_id,
                isolated=bool(h.row.isolated),
                verified=bool(h.row.verified),
                region=h.row.region,
                draining=bool(h.row.draining),
                egress=h.egress,
            )
            f = freeing.get(h.row.id)
            if f is not None:
                cap.freeing_cpu, cap.freeing_memory_mib = f.cpu, f.memory_mib
                cap.freeing_gpus = set(f.gpus)
            known.append(cap)
            if h.row.state == "ready":
                live.append(cap)
        return live, known


# Positions in CONTAINER_COLUMNS's rows (the fleet view's live containers).
_ID, _STATE = (list(CONTAINER_COLUMNS.selected_columns.keys()).index(k) for k in ("id", "state"))
_NO_USE = HostUse()  # a host with no live container (never changed)


def _ready(d: FunctionDemand) -> int:
    """How many of the function's containers are ready (running)."""
    return sum(1 for c in d.containers if c.state == "running")


def _reserved_tier(conn: Connection, function_id: str) -> bool:
    """Whether the function runs in its account's reservations (paid up front)."""
    spec = SPECS.get(conn, function_id)
    return spec is not None and spec.terms.tier == "reserved"
