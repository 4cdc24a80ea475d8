"""The scheduler's view of hosts, live containers and the functions it plans, kept in
memory across ticks.

Owned by the scheduler loop (scheduler/loop.py). Each tick brings it up to date with one
indexed read of the rows changed since the last one: the store bumps ``change_seq`` on every
write of a column placement reads (triggers of migration 0028, whoever writes: an agent's
report, another replica's API, the tick itself), so a quiet tick reads what changed, not the
fleet. It is rebuilt whole from the store when the loop starts leading, after a tick failed
(in doubt), and once a minute (rows deleted outright leave no change behind).

Never ahead of the store: what a tick plans on is what the store had committed when it
read. On PostgreSQL, numbers are handed out before their transactions commit, so a read
first takes :data:`CHANGES_LOCK` exclusively for an instant (every writer of a watched
column holds it shared until it commits): the numbers handed out by then all belong to
finished transactions, and the next read starts from there. On SQLite writers take turns,
so the counters read in the tick's own transaction are exact.

What the tick derives from the live containers is kept here too, changed row by row as the
rows change: each host's use (what its live containers hold, and what those told to stop
still hold), each function's containers, the GPU leases, and the containers that became
ready. A quiet tick then passes over no container at all; its cost follows the functions it
plans and the hosts it offers, not the containers the fleet runs.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Connection, Engine, Text, cast, select, text

from crucible.server.services.hosts import LIVE_CONTAINER_STATES
from crucible.server.services.market import HOST_COLUMNS, HostRow, LiveMarket
from crucible.server.store.tables import apps, change_counters, containers, functions, hosts

__all__ = ["CHANGES_LOCK", "CONTAINER_COLUMNS", "FleetView", "HostUse", "gpu_indices"]

log = logging.getLogger("crucible.scheduler")

# The advisory lock between writers of watched columns (shared, in the triggers of migration
# 0028) and a view's read (exclusive, an instant): the same number as there.
CHANGES_LOCK = 0x6372_7563_7669_6577
# How long a read waits for writers in flight to commit before it reads everything instead.
# Writers that come meanwhile queue behind the waiting read, so this bounds their stall too.
_LOCK_WAIT = "200ms"
_REBUILD_MS = 60_000  # a full read this often: a row deleted outright leaves no change

# A container as the tick reads it (live ones: services/hosts.LIVE_CONTAINER_STATES).
CONTAINER_COLUMNS = select(
    containers.c.id,
    containers.c.function_id,
    containers.c.host_id,
    containers.c.state,
    containers.c.created_ms,
    containers.c.last_active_ms,
    containers.c.ready_ms,
    containers.c.cpu,
    containers.c.memory_mib,
    # As text, parsed through loop._indices: a few distinct lists ("[0]", "[1, 2]").
    cast(containers.c.gpu_indices, Text).label("gpu_indices_text"),
    containers.c.gpu_model,
    containers.c.lease_end_ms,
)
_LIVE = frozenset(LIVE_CONTAINER_STATES)
# Positions in CONTAINER_COLUMNS's rows: the loops over containers read them by position.
_ID, _FN, _STATE, _HOST, _CPU, _MEM, _GPUS, _READY, _CREATED, _MODEL, _LEASE_END = (
    list(CONTAINER_COLUMNS.selected_columns.keys()).index(k)
    for k in (
        "id",
        "function_id",
        "state",
        "host_id",
        "cpu",
        "memory_mib",
        "gpu_indices_text",
        "ready_ms",
        "created_ms",
        "gpu_model",
        "lease_end_ms",
    )
)


@functools.lru_cache(maxsize=4096)
def gpu_indices(text: str | None) -> tuple[int, ...]:
    """A container's GPU indices from their stored JSON text (None or "null": none)."""
    return tuple(int(i) for i in orjson.loads(text) or ()) if text else ()


@dataclass
class HostUse:
    """What some containers on one host hold. CPU is counted in thousandths of a core, so
    that adding and taking back containers for as long as the view lives leaves no rounding
    behind; a GPU is held while any of the containers holds it."""

    milli_cpu: int = 0
    memory_mib: int = 0
    gpus: Counter[int] = field(default_factory=Counter)

    @property
    def cpu(self) -> float:
        return self.milli_cpu / 1000

    def add(self, row: Any, sign: int) -> None:
        """Count the container ``row`` in (``sign`` 1) or out (-1). A container is counted
        at no less than the CPU it asked for (a part of a thousandth rounds up)."""
        self.milli_cpu += sign * math.ceil(round(float(row[_CPU] or 0) * 1000, 6))
        self.memory_mib += sign * int(row[_MEM] or 0)
        text = row[_GPUS]
        if text:
            gpus = self.gpus
            for i in gpu_indices(text):
                n = gpus[i] + sign
                if n > 0:
                    gpus[i] = n
                else:
                    del gpus[i]

    @property
    def empty(self) -> bool:
        return not (self.milli_cpu or self.memory_mib or self.gpus)


def _add_use(by_host: dict[str, HostUse], row: Any, sign: int) -> None:
    """Count the container ``row`` into (1) or out of (-1) its host's entry of ``by_host``;
    a host left holding nothing has no entry."""
    host = row[_HOST]
    use = by_host.get(host)
    if use is None:
        use = by_host[host] = HostUse()
    use.add(row, sign)
    if use.empty:
        del by_host[host]


# The tables whose change_seq the view follows, in the order of its marks.
_TABLES = ("hosts", "containers", "functions", "apps")
_PG_MARKS = text(
    "SELECT "
    + ", ".join(
        f"(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {t}_change_seq)"
        for t in _TABLES
    )
)
_FUNCTION_COLUMNS = select(
    functions.c.id, functions.c.account_id, functions.c.spec_rev, functions.c.app_id
)
_APP_COLUMNS = select(apps.c.id, apps.c.state)
# Functions that keep warm containers (min or buffer containers) in running apps.
_WARM = select(functions.c.id, (functions.c.warm.is_(True) & (apps.c.state == "running"))).join(
    apps, apps.c.id == functions.c.app_id
)
_WARM_DELTA_MAX = 500  # more functions or apps changed at once: read every warm one again
_Marks = tuple[int, int, int, int]


class FunctionRow(NamedTuple):
    """What a tick reads of a function: its owner, its spec's version, its app's state."""

    id: str
    account_id: str
    spec_rev: int
    app_state: str


@dataclass
class FleetView:
    """Hosts (with their parsed inventories) and live containers as the store had them at
    the last :meth:`refresh`."""

    hosts: dict[str, HostRow] = field(default_factory=dict)
    live: dict[str, Any] = field(default_factory=dict)  # container id -> CONTAINER_COLUMNS row
    # Derived from ``live``, kept as its rows change:
    # per host, what its live containers hold (stopping ones included, until they end), and
    # what the stopping ones hold (room the plan counts on instead of stopping more);
    held: dict[str, HostUse] = field(default_factory=dict)
    freeing: dict[str, HostUse] = field(default_factory=dict)
    # per function, its live containers but those stopping (id -> row);
    by_function: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the containers that hold a GPU lease still open (the market reconciles its leases);
    lease_ids: set[str] = field(default_factory=set)
    # (function, start time in ms) of the containers that became ready (and are not
    # stopping) since the last take_started().
    _started: list[tuple[str, float]] = field(default_factory=list)
    # Functions whose containers, row or app changed since the last take_changed(); None:
    # every function (the view was read whole).
    _changed: set[str] | None = None
    # Hosts whose rows changed since the last take_changed_hosts(); None: every host.
    _changed_hosts: set[str] | None = None
    # Functions asked for (:meth:`functions_of`): id -> (account, spec_rev, app), and the
    # states of their apps.
    _functions: dict[str, tuple[str, int, str]] = field(default_factory=dict)
    _apps: dict[str, str] = field(default_factory=dict)
    # Functions that keep warm containers in running apps (planned even with no work).
    warm: set[str] = field(default_factory=set)
    # The change numbers read up to (_TABLES); None: read everything next time.
    _marks: _Marks | None = None
    _built_ms: int = 0
    # What the last refresh read: rows of hosts and of containers (a full read counts all).
    read_rows: tuple[int, int] = (0, 0)
    # PostgreSQL: the last barrier's marks (None: none taken, or it timed out).
    _last_barrier: _Marks | None = None

    def held_by(self, container_id: str) -> tuple[float, int] | None:
        """What a live container holds (cores, MiB of memory): a GPU lease's, by its id."""
        row = self.live.get(container_id)
        return None if row is None else (float(row[_CPU]), int(row[_MEM]))

    def invalidate(self) -> None:
        """Read everything again at the next refresh (a new term, or a failed tick)."""
        self._marks = None

    def barrier(self, engine: Engine) -> _Marks | None:
        """On PostgreSQL: the change numbers every one of which belongs to a finished
        transaction, in a transaction of its own, before the tick's reading one begins.
        None elsewhere, or when writers did not finish in time (the next refresh then reads
        everything and keeps its marks)."""
        if engine.dialect.name != "postgresql":
            return None
        self._last_barrier = None
        try:
            with engine.begin() as conn:
                conn.execute(text(f"SET LOCAL lock_timeout = '{_LOCK_WAIT}'"))
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CHANGES_LOCK})
                h, c, f, a = conn.execute(_PG_MARKS).one()
                self._last_barrier = int(h), int(c), int(f), int(a)
                return self._last_barrier
        except Exception as exc:  # lock timeout: writers in flight; read everything instead
            log.info("fleet view: no barrier this tick (%s); reading the whole fleet", exc)
            return None

    def containers_seen(self, conn: Connection) -> int | None:
        """A containers' change number such that ``conn``'s transaction, begun after the
        last tick, sees every container change up to it: on SQLite the counter now (numbers
        are handed out in commit order; read it before what it vouches for), on PostgreSQL
        the last barrier's (each of its numbers committed before the last tick's reading
        transaction began). None when there is none to go on."""
        if conn.dialect.name == "postgresql":
            return None if self._last_barrier is None else self._last_barrier[1]
        n = conn.execute(
            select(change_counters.c.n).where(change_counters.c.name == "containers")
        ).scalar_one_or_none()
        return None if n is None else int(n)

    def refresh(
        self, conn: Connection, market: LiveMarket, now_ms: int, barrier: _Marks | None
    ) -> None:
        """Bring the view up to the store's committed state, in the tick's transaction."""
        if conn.dialect.name == "postgresql":
            upto = barrier
        else:
            counts = dict(conn.execute(select(change_counters.c.name, change_counters.c.n)).all())
            n_hosts, n_containers, n_functions, n_apps = (int(counts.get(t, 0)) for t in _TABLES)
            upto = (n_hosts, n_containers, n_functions, n_apps)
        marks = self._marks
        if marks is None or upto is None or now_ms - self._built_ms >= _REBUILD_MS:
            self._read_all(conn, market)
            if upto is not None:
                self._marks, self._built_ms = upto, now_ms
            return
        host_rows = conn.execute(HOST_COLUMNS.where(hosts.c.change_seq > marks[0])).all()
        for h in market.with_devices(conn, host_rows):
            self.hosts[h.row.id] = h
        if self._changed_hosts is not None:
            self._changed_hosts.update(r.id for r in host_rows)
        live = self.live
        container_rows = conn.execute(
            CONTAINER_COLUMNS.where(containers.c.change_seq > marks[1])
        ).all()
        changed = self._changed
        for r in container_rows:
            old = live.pop(r[_ID], None)
            if changed is not None:
                changed.add(r[_FN])
            if old is not None:
                self._count(old, -1)
            if r[_STATE] in _LIVE:
                live[r[_ID]] = r
                self._count(r, 1)
                self._note_ready(old, r)
        cached = self._functions
        changed_functions = []
        for fid, account_id, spec_rev, app_id in conn.execute(
            _FUNCTION_COLUMNS.where(functions.c.change_seq > marks[2])
        ):
            changed_functions.append(fid)
            if changed is not None:
                changed.add(fid)
            if fid in cached:
                cached[fid] = (account_id, spec_rev, app_id)
                if app_id not in self._apps:
                    self._read_apps(conn, [app_id])
        changed_apps = []
        for app_id, state in conn.execute(_APP_COLUMNS.where(apps.c.change_seq > marks[3])):
            changed_apps.append(app_id)
            if app_id in self._apps:
                self._apps[app_id] = state
        if changed_apps and changed is not None:
            of_apps = set(changed_apps)
            changed.update(f for f, row in cached.items() if row[2] in of_apps)
        if len(changed_functions) + len(changed_apps) > _WARM_DELTA_MAX:
            self._read_warm(conn)
        elif changed_functions or changed_apps:
            # Whether each changed function, and each function of a changed app, is warm now.
            for fid, is_warm in conn.execute(
                _WARM.where(
                    functions.c.id.in_(changed_functions) | functions.c.app_id.in_(changed_apps)
                )
            ):
                if is_warm:
                    self.warm.add(fid)
                else:
                    self.warm.discard(fid)
        self._marks = upto
        self.read_rows = (len(host_rows), len(container_rows))

    def take_changed(self) -> set[str] | None:
        """The functions whose containers, row or app changed since the last call; None when
        that is not known (the view was read whole since): take every function as changed."""
        changed, self._changed = self._changed, set()
        return changed

    def take_changed_hosts(self) -> set[str] | None:
        """The hosts whose rows changed since the last call; None: every host may have."""
        changed, self._changed_hosts = self._changed_hosts, set()
        return changed

    def take_started(self) -> list[tuple[str, float]]:
        """(function, how long it took to become ready in ms) of each container that became
        ready since the last call, each once."""
        started, self._started = self._started, []
        return started

    def _count(self, row: Any, sign: int) -> None:
        """Count a live container's row into (1) or out of (-1) what is derived from it."""
        cid = row[_ID]
        _add_use(self.held, row, sign)
        if row[_STATE] == "stopping":
            _add_use(self.freeing, row, sign)
        else:
            fid = row[_FN]
            group = self.by_function.get(fid)
            if sign > 0:
                if group is None:
                    self.by_function[fid] = {cid: row}
                else:
                    group[cid] = row
            elif group is not None:
                group.pop(cid, None)
                if not group:
                    del self.by_function[fid]
        if row[_MODEL] is not None and row[_LEASE_END] is None:
            if sign > 0:
                self.lease_ids.add(cid)
            else:
                self.lease_ids.discard(cid)

    def _note_ready(self, old: Any, new: Any) -> None:
        """``new`` became ready if it is ready and not stopping, and ``old`` (its row before,
        if any) was not."""
        if new[_READY] is None or new[_STATE] == "stopping":
            return
        if old is None or old[_READY] is None or old[_STATE] == "stopping":
            self._started.append((new[_FN], float(new[_READY] - new[_CREATED])))

    def functions_of(self, conn: Connection, ids: Collection[str]) -> list[FunctionRow]:
        """The rows of functions ``ids`` (those that exist), read from the store only for
        functions the view has not kept since the last full read."""
        cached = self._functions
        missing = [f for f in ids if f not in cached]
        for i in range(0, len(missing), 500):
            found = conn.execute(_FUNCTION_COLUMNS.where(functions.c.id.in_(missing[i : i + 500])))
            for fid, account_id, spec_rev, app_id in found:
                cached[fid] = (account_id, spec_rev, app_id)
        self._read_apps(conn, {cached[f][2] for f in missing if f in cached} - set(self._apps))
        out = []
        for fid in ids:
            row = cached.get(fid)
            if row is not None:
                out.append(FunctionRow(fid, row[0], row[1], self._apps.get(row[2], "stopped")))
        return out

    def _read_apps(self, conn: Connection, ids: Collection[str]) -> None:
        wanted = list(ids)
        for i in range(0, len(wanted), 500):
            for app_id, state in conn.execute(
                _APP_COLUMNS.where(apps.c.id.in_(wanted[i : i + 500]))
            ):
                self._apps[app_id] = state

    def _read_warm(self, conn: Connection) -> None:
        self.warm = {
            fid
            for fid in conn.execute(
                select(functions.c.id)
                .join(apps, apps.c.id == functions.c.app_id)
                .where(functions.c.warm.is_(True), apps.c.state == "running")
            ).scalars()
        }

    def _read_all(self, conn: Connection, market: LiveMarket) -> None:
        self._functions, self._apps = {}, {}  # read again as asked for
        self._read_warm(conn)
        self.hosts = {h.row.id: h for h in market.read_hosts(conn)}
        before = self.live
        self._changed = self._changed_hosts = None  # until taken: every one
        self.live, self.held, self.freeing, self.by_function = {}, {}, {}, {}
        self.lease_ids = set()
        for r in conn.execute(CONTAINER_COLUMNS.where(containers.c.state.in_(_LIVE))):
            self.live[r[_ID]] = r
            self._count(r, 1)
            self._note_ready(before.get(r[_ID]), r)
        self.read_rows = (len(self.hosts), len(self.live))
