"""Logs: lines a container's worker sends (what the function printed), stored per app,
container and call, read back by the app's owner."""

from __future__ import annotations

from sqlalchemy import Connection, func, insert, select

from crucible.errors import NotFoundError
from crucible.protocol.logs import LogBatch, LogLine, LogPage, LogSent
from crucible.server.auth import Principal
from crucible.server.services.apps import get_app
from crucible.server.store.tables import calls, containers, functions, log_lines

__all__ = ["add_exit_tail", "read_logs", "tail_after", "within_cap", "write_logs"]


def within_cap(batch: LogBatch, counts: dict[str, int], container_id: str, cap: int) -> LogBatch:
    """The part of ``batch`` the container may still store (``counts`` is updated); the
    line that crosses the cap is replaced by one saying the rest is dropped."""
    seen = counts.get(container_id, 0)
    if seen > cap:
        return LogBatch(lines=[])
    room = cap - seen
    kept = batch.lines[:room]
    if len(batch.lines) > room:
        last = batch.lines[room] if room < len(batch.lines) else batch.lines[-1]
        kept.append(
            LogSent(
                ts_ms=last.ts_ms,
                stream="stderr",
                call_id=last.call_id,
                line=f"[crucible] this container reached its {cap} stored log lines; "
                "the rest is dropped",
            )
        )
        counts[container_id] = cap + 1
    else:
        counts[container_id] = seen + len(kept)
    return LogBatch(lines=kept)


def write_logs(conn: Connection, container_id: str, batch: LogBatch) -> str | None:
    """Store a container's lines; returns its app id (to wake followers), None if unknown.
    A call id must be one of this container's account's calls, or it is dropped; a relayed
    web request's id (``rq-...``, no row: server/web_relay.py) is kept, as it only labels
    this container's own lines."""
    row = conn.execute(
        select(containers.c.account_id, containers.c.function_id, functions.c.app_id)
        .join(functions, functions.c.id == containers.c.function_id)
        .where(containers.c.id == container_id)
    ).first()
    if row is None or not batch.lines:
        return None
    call_ids = {x.call_id for x in batch.lines if x.call_id and not x.call_id.startswith("rq-")}
    known = (
        set(
            conn.execute(
                select(calls.c.id).where(
                    calls.c.id.in_(call_ids), calls.c.account_id == row.account_id
                )
            ).scalars()
        )
        if call_ids
        else set()
    )
    known |= {x.call_id for x in batch.lines if x.call_id and x.call_id.startswith("rq-")}
    conn.execute(
        insert(log_lines),
        [
            {
                "account_id": row.account_id,
                "app_id": row.app_id,
                "function_id": row.function_id,
                "container_id": container_id,
                "call_id": x.call_id if x.call_id in known else None,
                "ts_ms": x.ts_ms,
                "stream": x.stream,
                "line": x.line,
            }
            for x in batch.lines
        ],
    )
    return str(row.app_id)


# How far back (in the app's lines) a crashed container's last stored lines are looked for.
_TAIL_SCAN_LINES = 5000


def add_exit_tail(conn: Connection, container_id: str, tail: list[str], now_ms: int) -> list[str]:
    """Store the lines of a crashed container's last output (``tail``, as its agent read
    them) that its worker did not send before it died: the worker sends every half second,
    so what it printed just before a segfault or ``os._exit`` (the lines that explain the
    crash) never arrived. The lines already stored, the end of the container's log, are
    matched against the start of ``tail``; the rest is added, tied to the call the
    container was running if it ran one. Returns the wake-up key of the app's log followers
    when lines were added."""
    row = conn.execute(
        select(functions.c.app_id)
        .join(containers, containers.c.function_id == functions.c.id)
        .where(containers.c.id == container_id)
    ).first()
    if row is None or not tail:
        return []
    newest = conn.execute(
        select(func.max(log_lines.c.id)).where(log_lines.c.app_id == row.app_id)
    ).scalar()
    stored: list[str] = []
    if newest is not None:
        stored = list(
            conn.execute(
                select(log_lines.c.line)
                .where(
                    log_lines.c.app_id == row.app_id,
                    log_lines.c.id > newest - _TAIL_SCAN_LINES,
                    log_lines.c.container_id == container_id,
                )
                .order_by(log_lines.c.id.desc())
                .limit(len(tail))
            ).scalars()
        )[::-1]
    sent = next(
        (k for k in range(min(len(stored), len(tail)), 0, -1) if stored[-k:] == tail[:k]), 0
    )
    missing = tail[sent:]
    if not missing:
        return []
    running = (
        conn.execute(
            select(calls.c.id).where(
                calls.c.container_id == container_id, calls.c.state == "running"
            )
        )
        .scalars()
        .all()
    )
    call_id = running[0] if len(running) == 1 else None
    batch = LogBatch(
        lines=[LogSent(ts_ms=now_ms, stream="stderr", call_id=call_id, line=x) for x in missing]
    )
    write_logs(conn, container_id, batch)
    return [f"logs:{row.app_id}"]


def read_logs(
    conn: Connection,
    principal: Principal,
    app_id: str,
    *,
    call_id: str | None = None,
    after: int = 0,
    limit: int = 1000,
    now_ms: int = 0,
    kept_days: float = 0.0,
) -> LogPage:
    """Lines after ``after``, oldest first. ``kept_days``: how long log lines are kept (0:
    forever); the page says it when the app is older than that at ``now_ms``."""
    app = get_app(conn, principal, app_id)  # NotFound for another account's app
    q = (
        select(log_lines)
        .where(log_lines.c.app_id == app_id, log_lines.c.id > after)
        .order_by(log_lines.c.id)
        .limit(limit)
    )
    if call_id is not None and call_id.startswith("rq-"):
        # A web request relayed to a warm container (server/web_relay.py) has no call row;
        # its lines are this app's (checked above) that carry its id.
        q = q.where(log_lines.c.call_id == call_id)
    elif call_id is not None:
        found = conn.execute(
            select(calls.c.id).where(
                calls.c.id == call_id,
                calls.c.app_id == app_id,
                calls.c.account_id == principal.account_id,
            )
        ).first()
        if found is None:
            raise NotFoundError(f"call {call_id} not found in app {app_id}")
        q = q.where(log_lines.c.call_id == call_id)
    lines = [
        LogLine(
            id=r.id,
            ts_ms=r.ts_ms,
            stream=r.stream,
            call_id=r.call_id,
            line=r.line,
            container_id=r.container_id,
            function_id=r.function_id,
        )
        for r in conn.execute(q)
    ]
    pruned = kept_days > 0 and app.created_ms < now_ms - kept_days * 86_400_000
    return LogPage(
        lines=lines,
        next_after=lines[-1].id if lines else after,
        kept_days=kept_days if pruned else None,
    )


def tail_after(
    conn: Connection, principal: Principal, app_id: str, lines: int, call_id: str | None = None
) -> int:
    """The ``after`` from which :func:`read_logs` returns the last ``lines`` lines of an app
    (or of one call of it): one step back along the (app, id) or (call, id) index."""
    get_app(conn, principal, app_id)
    q = select(log_lines.c.id).where(log_lines.c.app_id == app_id)
    if call_id is not None:
        q = q.where(log_lines.c.call_id == call_id)
    found = conn.execute(q.order_by(log_lines.c.id.desc()).offset(lines).limit(1)).scalar()
    return int(found) if found is not None else 0
