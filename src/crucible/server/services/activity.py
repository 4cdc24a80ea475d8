"""What is happening in an app, per function: live containers by state, and calls created in
a recent window by outcome (the console's app page). Every count is one index range:
containers by function, calls by (function, state, id) where ids sort by creation time."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Connection, func, select

from crucible.protocol.ids import first_id_at
from crucible.server.auth import Principal
from crucible.server.services.apps import get_app
from crucible.server.store.tables import calls, containers, functions

__all__ = ["FunctionActivity", "app_activity"]

_LIVE = ("pending", "starting", "running", "stopping")
_CALL_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "timed_out")


@dataclass
class FunctionActivity:
    function_id: str
    name: str
    containers: dict[str, int] = field(default_factory=dict)  # live state -> count
    calls: dict[str, int] = field(default_factory=dict)  # state -> calls created in window

    @property
    def live_containers(self) -> int:
        return sum(self.containers.values())

    @property
    def errors(self) -> int:
        return self.calls.get("failed", 0) + self.calls.get("timed_out", 0)


def app_activity(
    conn: Connection, principal: Principal, app_id: str, since_ms: int
) -> list[FunctionActivity]:
    """Per function of one of the caller's apps (NotFound for another account's): its live
    containers by state and the calls created since ``since_ms`` by state."""
    get_app(conn, principal, app_id)
    fns = {
        r.id: FunctionActivity(r.id, r.name)
        for r in conn.execute(
            select(functions.c.id, functions.c.name)
            .where(functions.c.app_id == app_id, functions.c.account_id == principal.account_id)
            .order_by(functions.c.name)
        )
    }
    if not fns:
        return []
    for fid, st, n in conn.execute(
        select(containers.c.function_id, containers.c.state, func.count())
        .where(containers.c.function_id.in_(fns), containers.c.state.in_(_LIVE))
        .group_by(containers.c.function_id, containers.c.state)
    ):
        fns[fid].containers[st] = int(n)
    floor = first_id_at("ca", since_ms)
    for fid in fns:
        for st in _CALL_STATES:
            # One (function, state) range per count: the index serves each without a scan
            # of the function's older calls.
            n = conn.execute(
                select(func.count()).where(
                    calls.c.function_id == fid, calls.c.state == st, calls.c.id >= floor
                )
            ).scalar_one()
            if n:
                fns[fid].calls[st] = int(n)
    return list(fns.values())
