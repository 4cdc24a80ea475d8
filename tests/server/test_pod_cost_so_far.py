"""A running pod's "cost so far" counts its time since it was last metered (it showed $0 for
up to a metering interval, 30 s, then jumped): `crucible pod show` and `cluster show`."""

from __future__ import annotations

from sqlalchemy import select

from crucible.core.metering import interval_cost
from crucible.protocol.accounts import Scope
from crucible.server.scheduler.loop import SchedulerLoop
from crucible.server.store.tables import containers, pods

from server_testlib import MakeServer, ManualClock

T0 = 1_800_000_000_000


def test_a_running_pods_cost_grows_between_meterings(make_server: MakeServer) -> None:
    server = make_server(meter_interval_s=30)
    clock = ManualClock(T0)
    server.state.clock = clock
    alice = server.tenant("alice").token
    host_token = server.tenant("hoster", Scope.HOST).token
    host_id = server.register_host(host_token, "box-host")
    server.ok("POST", "/v1/pods", token=alice, json={"name": "box", "cpu": 2})
    loop = SchedulerLoop(server.state)
    loop.tick()
    with server.state.engine.connect() as conn:
        ct = conn.execute(
            select(containers.c.id, containers.c.rate_micros_per_hour)
            .join(pods, pods.c.function_id == containers.c.function_id)
            .where(pods.c.name == "box")
        ).one()
    report = {"containers": [{"container_id": ct.id, "state": "running"}], "wait_s": 0}
    server.ok("POST", f"/v1/hosts/{host_id}/sync", token=host_token, json=report)
    assert ct.rate_micros_per_hour > 0
    clock.now += 12_000  # within the first metering interval: nothing metered yet
    shown = server.ok("GET", "/v1/pods/box", token=alice)
    assert shown["cost_micros"] == interval_cost(ct.rate_micros_per_hour, T0, T0, T0 + 12_000)
    assert shown["cost_micros"] > 0
    [listed] = server.ok("GET", "/v1/pods", token=alice)
    assert listed["cost_micros"] == shown["cost_micros"]
