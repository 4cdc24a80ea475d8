"""``crucible server`` with counters: HTTP requests per route and SQL statements per route
(and per statement text), for profile_calls.py ``--workload sql``. Nothing in src/ changes:
the store's engine factory and the app factory are wrapped before the server imports them.

    python benchmarks/_server_probe.py server        # same arguments as `crucible server`

``kill -USR1 <pid>`` writes the counters as JSON to $CRUCIBLE_BENCH_PROBE_OUT;
``kill -USR2 <pid>`` resets them. With CRUCIBLE_BENCH_PROBE_CPROFILE=1, USR2 also starts
cProfile on the event loop's thread and USR1 writes its stats next to the JSON (``.pstats``).
"""

from __future__ import annotations

import contextvars
import json
import os
import re
import signal
import sys
import time
from collections import defaultdict
from typing import Any

import crucible.server.store.db as db

_route: contextvars.ContextVar[str] = contextvars.ContextVar("route", default="background")
_ID = re.compile(r"/[a-z]{2}-[0-9a-z]{22}|/[0-9a-f]{32,64}")
requests: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])  # route -> [n, wall s]
by_route: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])  # route -> [statements, s]
by_sql: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])  # statement -> [n, s]
started = [time.perf_counter()]


def _engine(url: str) -> Any:
    from sqlalchemy import event

    engine = _orig_engine(url)

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        conn.info.setdefault("probe_t0", []).append(time.perf_counter())

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        dt = time.perf_counter() - conn.info["probe_t0"].pop()
        key = " ".join(statement.split())
        key = key[:140] + ("…" if len(key) > 140 else "")
        for table, k in ((by_sql, key), (by_route, _route.get())):
            table[k][0] += 1
            table[k][1] += dt

    @event.listens_for(engine, "commit")
    def _commit(conn: Any) -> None:
        by_sql["COMMIT"][0] += 1
        by_route[_route.get()][0] += 0  # commits are listed per statement only

    return engine


_orig_engine = db.create_store_engine
db.create_store_engine = _engine

import crucible.server.app as appmod  # noqa: E402  (after the engine factory is wrapped)

_orig_create_app = appmod.create_app


class _Count:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = f"{scope['method']} {_ID.sub('/{id}', scope['path'])}"
        token = _route.set(route)
        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            requests[route][0] += 1
            requests[route][1] += time.perf_counter() - t0
            _route.reset(token)


def _create_app(state: Any, **kw: Any) -> Any:
    app = _orig_create_app(state, **kw)
    app.add_middleware(_Count)
    return app


appmod.create_app = _create_app


_PROFILE = os.environ.get("CRUCIBLE_BENCH_PROBE_CPROFILE") == "1"
_prof: list[Any] = []


def _dump(*_: Any) -> None:
    path = os.environ.get("CRUCIBLE_BENCH_PROBE_OUT", "server-probe.json")
    if _prof:
        _prof[0].disable()
        _prof[0].dump_stats(path + ".pstats")
        _prof.clear()
    data = {
        "seconds": time.perf_counter() - started[0],
        "requests": dict(requests),
        "statements_by_route": dict(by_route),
        "statements": dict(by_sql),
    }
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _reset(*_: Any) -> None:
    for table in (requests, by_route, by_sql):
        table.clear()
    started[0] = time.perf_counter()
    if _PROFILE:
        import cProfile

        if _prof:
            _prof[0].disable()
            _prof.clear()
        _prof.append(cProfile.Profile())
        _prof[0].enable()


signal.signal(signal.SIGUSR1, _dump)
signal.signal(signal.SIGUSR2, _reset)

if __name__ == "__main__":
    from crucible.cli.main import main

    sys.argv = ["crucible", *sys.argv[1:]]
    main()
