"""A container asked to stop is billed until its agent reports it stopped, but no longer than
its grace and an allowance past the ask: a host that goes on reporting it running (found by
this stop's host probe: 97 s billed for a container the renter stopped after 14 s, without
limit) is paid for no more than that. The clock is injected."""

from __future__ import annotations

from sqlalchemy import func, select

from crucible.protocol.accounts import Scope
from crucible.server.billing.entries import check_ledger
from crucible.server.scheduler.loop import SchedulerLoop
from crucible.server.services.containers import STOP_ALLOWANCE_MS
from crucible.server.store.tables import containers, meter_intervals

from server_testlib import MakeServer, ManualClock

T0 = 1_800_000_000_000


def _billed_ms(server: object, cid: str) -> int:
    with server.state.engine.connect() as conn:  # type: ignore[attr-defined]
        return int(
            conn.execute(
                select(func.sum(meter_intervals.c.end_ms - meter_intervals.c.start_ms)).where(
                    meter_intervals.c.container_id == cid
                )
            ).scalar()
            or 0
        )


def test_a_host_that_ignores_a_stop_is_not_paid_past_its_deadline(
    make_server: MakeServer,
) -> None:
    server = make_server(meter_interval_s=10, host_timeout_s=3600)
    clock = ManualClock(T0)
    server.state.clock = clock
    host_token = server.tenant("hoster", Scope.HOST).token
    renter = server.tenant("renter").token
    host_id = server.register_host(host_token, "box")
    app_id = server.new_app(renter)
    fn = server.new_function(renter, app_id, server.put_blob(renter))
    server.new_calls(renter, fn)
    loop = SchedulerLoop(server.state)
    loop.tick()
    with server.state.engine.connect() as conn:
        cid = conn.execute(select(containers.c.id).where(containers.c.function_id == fn)).scalar()
    assert cid is not None
    running = {"containers": [{"container_id": cid, "state": "running"}]}

    def sync() -> dict[str, object]:
        return server.ok("POST", f"/v1/hosts/{host_id}/sync", token=host_token, json=running)

    sync()  # started at T0
    for _ in range(14):
        clock.now += 1_000
        sync()
        loop.tick()
    server.ok("POST", f"/v1/apps/{app_id}/stop", token=renter)
    loop.tick()  # the scheduler asks the agent to stop it
    asked = clock.now
    with server.state.engine.connect() as conn:
        row = conn.execute(select(containers).where(containers.c.id == cid)).one()
    assert row.state == "stopping" and row.stop_by_ms == asked + STOP_ALLOWANCE_MS
    # The host answers every stop with "running", for five minutes.
    for _ in range(300):
        clock.now += 1_000
        assert cid in sync()["stop"]  # type: ignore[operator]
        loop.tick()
    assert _billed_ms(server, cid) == asked - T0 + STOP_ALLOWANCE_MS
    # It finally reports the container gone: nothing more is billed.
    clock.now += 1_000
    exited = {"container_id": cid, "state": "exited", "exit_code": 0, "reason": "stopped"}
    server.ok("POST", f"/v1/hosts/{host_id}/sync", token=host_token, json={"containers": [exited]})
    loop.tick()
    assert _billed_ms(server, cid) == asked - T0 + STOP_ALLOWANCE_MS
    with server.state.engine.connect() as conn:
        assert check_ledger(conn) == []


def test_an_agent_that_stops_in_time_is_billed_to_the_stop(make_server: MakeServer) -> None:
    server = make_server(meter_interval_s=10)
    clock = ManualClock(T0)
    server.state.clock = clock
    host_token = server.tenant("hoster", Scope.HOST).token
    renter = server.tenant("renter").token
    host_id = server.register_host(host_token, "box")
    app_id = server.new_app(renter)
    fn = server.new_function(renter, app_id, server.put_blob(renter))
    server.new_calls(renter, fn)
    loop = SchedulerLoop(server.state)
    loop.tick()
    with server.state.engine.connect() as conn:
        cid = conn.execute(select(containers.c.id).where(containers.c.function_id == fn)).scalar()
    report = {"containers": [{"container_id": cid, "state": "running"}]}
    server.ok("POST", f"/v1/hosts/{host_id}/sync", token=host_token, json=report)
    clock.now += 5_000
    server.ok("POST", f"/v1/apps/{app_id}/stop", token=renter)
    loop.tick()
    clock.now += 7_000  # its grace and a sync
    exited = {"container_id": cid, "state": "exited", "exit_code": 0, "reason": "stopped"}
    server.ok("POST", f"/v1/hosts/{host_id}/sync", token=host_token, json={"containers": [exited]})
    loop.tick()
    assert _billed_ms(server, cid) == 12_000


def test_a_restarted_agents_old_containers_are_billed_to_its_last_sync(
    make_server: MakeServer,
) -> None:
    """An agent killed and started again within the host timeout: its containers died with it,
    and the new process's first sync ends them; they are billed to when the old process was
    last heard from, not to that sync (the probe saw 13 s of a dead container billed). An
    agent that registers again with its containers running (it says which session it
    resumes) is billed as before."""
    server = make_server(meter_interval_s=10, host_timeout_s=3600)
    clock = ManualClock(T0)
    server.state.clock = clock
    host_token = server.tenant("hoster", Scope.HOST).token
    renter = server.tenant("renter").token
    host_id = server.register_host(host_token, "box")
    fn = server.new_function(renter, server.new_app(renter), server.put_blob(renter))
    server.new_calls(renter, fn)
    loop = SchedulerLoop(server.state)
    loop.tick()
    with server.state.engine.connect() as conn:
        cid = conn.execute(select(containers.c.id).where(containers.c.function_id == fn)).scalar()
    running = {"containers": [{"container_id": cid, "state": "running"}]}
    for _ in range(8):  # alive 7 s
        server.ok("POST", f"/v1/hosts/{host_id}/sync", token=host_token, json=running)
        clock.now += 1_000
    last_heard = clock.now - 1_000
    clock.now += 12_000  # the agent is dead, then a new process registers
    server.register_host(host_token, "box")
    clock.now += 1_000
    server.ok("POST", f"/v1/hosts/{host_id}/sync", token=host_token, json={"containers": []})
    loop.tick()
    with server.state.engine.connect() as conn:
        assert conn.execute(select(containers.c.state).where(containers.c.id == cid)).scalar() == (
            "stopped"
        )
    assert _billed_ms(server, cid) == last_heard - T0


def test_an_agent_that_resumes_its_session_keeps_its_containers_billed(
    make_server: MakeServer,
) -> None:
    server = make_server(meter_interval_s=10, host_timeout_s=3600)
    clock = ManualClock(T0)
    server.state.clock = clock
    host_token = server.tenant("hoster", Scope.HOST).token
    renter = server.tenant("renter").token
    host_id = server.register_host(host_token, "box")
    fn = server.new_function(renter, server.new_app(renter), server.put_blob(renter))
    server.new_calls(renter, fn)
    loop = SchedulerLoop(server.state)
    loop.tick()
    with server.state.engine.connect() as conn:
        cid = conn.execute(select(containers.c.id).where(containers.c.function_id == fn)).scalar()
    running = {"containers": [{"container_id": cid, "state": "running"}]}
    server.ok("POST", f"/v1/hosts/{host_id}/sync", token=host_token, json=running)
    clock.now += 5_000
    [host] = server.ok("GET", "/v1/hosts", token=host_token)
    body = {
        "name": "box",
        "inventory": host["inventory"],
        "resumes_session": host["agent_session"],
        "isolation": host["isolation"],
    }
    server.ok("POST", "/v1/hosts/register", token=host_token, json=body)
    for _ in range(25):
        clock.now += 1_000
        server.ok("POST", f"/v1/hosts/{host_id}/sync", token=host_token, json=running)
        loop.tick()
    assert _billed_ms(server, cid) == 30_000  # three whole intervals, none cut short
