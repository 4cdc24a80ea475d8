"""Crash loops: containers of a function that keep exiting before they become ready (the
worker cannot start: a segfault on import, out of memory while loading, a bad image).

Counted from the store: the containers of the function that stopped by a crash without ever
becoming ready, since the last one of its containers that did become ready, within the last
ten minutes. Each crash doubles the wait before the next container (1 s, 2 s, 4 s, ... at
most 60 s), so a broken function does not restart in a tight loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from crucible.protocol.common import LOAD_FAILED, ErrorInfo
from crucible.server.store.tables import call_attempts, calls, containers

__all__ = ["CrashLoop", "backoff_ms", "crash_loops", "load_error"]

_WINDOW_MS = 600_000
_NOT_CRASHES = ("stopped", "host_lost", "lost")  # asked to stop, or the host went away


@dataclass(frozen=True)
class CrashLoop:
    crashes: int  # consecutive containers that exited before becoming ready
    last_ms: int  # when the last of them stopped
    last_reason: str
    last_message: str
    retry_at_ms: int  # no new container before this

    def describe(self) -> str:
        # The end of the message: a crash's log tail ends with the error that ended it.
        detail = self.last_message.strip().splitlines()[-1] if self.last_message else ""
        if len(detail) > 300:
            detail = "…" + detail[-300:]
        return (
            f"{self.crashes} container(s) in a row exited before becoming ready "
            f"(last: {self.last_reason}{': ' + detail if detail else ''})"
        )


def backoff_ms(crashes: int) -> int:
    return int(min(60_000, 1_000 * 2 ** max(0, crashes - 1)))


def crash_loops(conn: Connection, function_ids: Iterable[str], now_ms: int) -> dict[str, CrashLoop]:
    fids = list(function_ids)
    if not fids:
        return {}
    last_ready = dict(
        conn.execute(
            select(containers.c.function_id, func.max(containers.c.ready_ms))
            .where(containers.c.function_id.in_(fids), containers.c.ready_ms.is_not(None))
            .group_by(containers.c.function_id)
        ).all()
    )
    rows = conn.execute(
        select(
            containers.c.function_id,
            containers.c.stopped_ms,
            containers.c.exit_reason,
            containers.c.exit_message,
        )
        .where(
            containers.c.function_id.in_(fids),
            containers.c.state == "stopped",
            containers.c.ready_ms.is_(None),
            containers.c.stopped_ms > now_ms - _WINDOW_MS,
            containers.c.exit_reason.not_in(_NOT_CRASHES),
        )
        .order_by(containers.c.stopped_ms)
    ).all()
    out: dict[str, CrashLoop] = {}
    for r in rows:
        if r.stopped_ms <= (last_ready.get(r.function_id) or 0):
            continue  # a container became ready since: that streak is over
        prev = out.get(r.function_id)
        crashes = (prev.crashes if prev else 0) + 1
        out[r.function_id] = CrashLoop(
            crashes=crashes,
            last_ms=r.stopped_ms,
            last_reason=r.exit_reason or "exited",
            last_message=r.exit_message or "",
            retry_at_ms=r.stopped_ms + backoff_ms(crashes),
        )
    return out


def load_error(conn: Connection, function_id: str, now_ms: int) -> ErrorInfo | None:
    """The error of the function's latest attempt that failed because its container could
    not load the function (an import error, an @crucible.enter() hook that raised), within
    the crash-loop window: the user's own exception, which the calls a crash loop fails get
    too, so that every call of a function that cannot load fails the same way. Only errors
    given by a container that never became ready count (a call whose own exception merely
    reads like a load failure is not handed to other calls). Failed attempts that were
    retried are kept in ``call_attempts``, last ones on the call."""
    since = now_ms - _WINDOW_MS
    retried = (
        select(call_attempts.c.ended_ms.label("at"), call_attempts.c.error)
        .join(containers, containers.c.id == call_attempts.c.container_id)
        .where(
            containers.c.function_id == function_id,
            containers.c.ready_ms.is_(None),  # failed by a container that never loaded
            call_attempts.c.outcome == "failed",
            call_attempts.c.ended_ms > since,
        )
        .order_by(call_attempts.c.ended_ms.desc())
        .limit(20)
    )
    last = (
        select(calls.c.finished_ms.label("at"), calls.c.error)
        .join(containers, containers.c.id == calls.c.container_id)
        .where(
            calls.c.function_id == function_id,
            containers.c.ready_ms.is_(None),
            calls.c.state == "failed",
            calls.c.finished_ms > since,
        )
        .order_by(calls.c.finished_ms.desc())
        .limit(20)
    )
    rows = [*conn.execute(retried).all(), *conn.execute(last).all()]
    for _, error in sorted(rows, key=lambda r: r[0], reverse=True):
        if isinstance(error, dict) and str(error.get("message", "")).startswith(LOAD_FAILED):
            return ErrorInfo.model_validate(error)
    return None
