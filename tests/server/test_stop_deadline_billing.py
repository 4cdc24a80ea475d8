"""A container asked to stop is billed until its agent reports it stopped, but no longer than
its grace and an allowance past the ask: a host that goes on reporting it running (found by
this stop's host probe: 97 s billed for a container the renter stopped after 14 s, without
limit) is paid for no more than that. A new agent process's predecessor's containers are
billed to when it was last heard from. The clock is injected."""

from __future__ import annotations

from sqlalchemy import select

from crucible.server.auth import container_token
from crucible.server.billing.entries import check_ledger
from crucible.server.services.containers import STOP_ALLOWANCE_MS
from crucible.server.store.tables import containers, meter_intervals

from server_testlib import MakeServer, metered_container

T0 = 1_800_000_000_000


def test_a_host_that_ignores_a_stop_is_not_paid_past_its_deadline(
    make_server: MakeServer,
) -> None:
    m = metered_container(make_server(meter_interval_s=10, host_timeout_s=3600), T0)
    server = m.server
    m.report()  # started at T0
    for _ in range(14):
        m.clock.now += 1_000
        m.report()
        m.loop.tick()
    server.ok("POST", f"/v1/apps/{m.app_id}/stop", token=m.renter)
    m.loop.tick()  # the scheduler asks the agent to stop it
    asked = m.clock.now
    with server.state.engine.connect() as conn:
        row = conn.execute(select(containers).where(containers.c.id == m.container_id)).one()
    assert row.state == "stopping" and row.stop_by_ms == asked + STOP_ALLOWANCE_MS
    token = container_token(server.state.secret, m.container_id)
    assert server.request("GET", "/v1/dicts", token=token).status_code == 200
    # The host answers every stop with "running", for five minutes.
    for _ in range(300):
        m.clock.now += 1_000
        assert m.container_id in m.report()["stop"]
        m.loop.tick()
    assert m.billed_ms() == asked - T0 + STOP_ALLOWANCE_MS
    # Past its deadline the container ended (it stayed "stopping" for ever, its token
    # working): its token opens nothing of the account's now.
    with server.state.engine.connect() as conn:
        row = conn.execute(select(containers).where(containers.c.id == m.container_id)).one()
    assert (row.state, row.stopped_ms) == ("stopped", asked + STOP_ALLOWANCE_MS), row
    assert server.request("GET", "/v1/dicts", token=token).status_code == 401
    # It finally reports the container gone: nothing more is billed.
    m.clock.now += 1_000
    m.report("exited", exit_code=0, reason="stopped")
    m.loop.tick()
    assert m.billed_ms() == asked - T0 + STOP_ALLOWANCE_MS
    with server.state.engine.connect() as conn:
        assert check_ledger(conn) == []


def test_an_agent_that_stops_in_time_is_billed_to_the_stop(make_server: MakeServer) -> None:
    m = metered_container(make_server(meter_interval_s=10), T0)
    m.report()
    m.clock.now += 5_000
    m.server.ok("POST", f"/v1/apps/{m.app_id}/stop", token=m.renter)
    m.loop.tick()
    m.clock.now += 7_000  # its grace and a sync
    m.report("exited", exit_code=0, reason="stopped")
    m.loop.tick()
    assert m.billed_ms() == 12_000


def test_a_restarted_agents_old_containers_are_billed_to_its_last_sync(
    make_server: MakeServer,
) -> None:
    """An agent killed and started again within the host timeout: its containers died with it,
    and the new process's first sync ends them; they are billed to when the old process was
    last heard from, not to that sync (the probe saw 13 s of a dead container billed)."""
    m = metered_container(make_server(meter_interval_s=10, host_timeout_s=3600), T0)
    for _ in range(8):  # alive 7 s
        m.report()
        m.clock.now += 1_000
    last_heard = m.clock.now - 1_000
    m.clock.now += 12_000  # the agent is dead, then a new process registers
    m.server.register_host(m.host_token, "box")
    m.clock.now += 1_000
    m.server.ok("POST", f"/v1/hosts/{m.host_id}/sync", token=m.host_token, json={"containers": []})
    m.loop.tick()
    with m.server.state.engine.connect() as conn:
        state = conn.execute(
            select(containers.c.state).where(containers.c.id == m.container_id)
        ).scalar()
    assert state == "stopped" and m.billed_ms() == last_heard - T0


def test_an_agent_that_resumes_its_session_keeps_its_containers_billed(
    make_server: MakeServer,
) -> None:
    """An agent that registers again with its containers running says which session it
    resumes: they are billed as before."""
    m = metered_container(make_server(meter_interval_s=10, host_timeout_s=3600), T0)
    m.report()
    m.clock.now += 5_000
    [host] = m.server.ok("GET", "/v1/hosts", token=m.host_token)
    body = {
        "name": "box",
        "inventory": host["inventory"],
        "resumes_session": host["agent_session"],
        "isolation": host["isolation"],
    }
    m.server.ok("POST", "/v1/hosts/register", token=m.host_token, json=body)
    for _ in range(25):
        m.clock.now += 1_000
        m.report()
        m.loop.tick()
    assert m.billed_ms() == 30_000  # three whole intervals, none cut short


def test_a_containers_last_stretch_is_metered_in_the_settings_intervals(
    make_server: MakeServer,
) -> None:
    """An ended container's remainder is cut by CRUCIBLE_METER_INTERVAL_S as running ones are
    (it was cut in 10 s pieces whatever the setting: more ledger entries for the same cost)."""
    m = metered_container(make_server(meter_interval_s=60), T0)
    m.report()  # started at T0
    m.clock.now += 50_000
    m.report("exited", exit_code=0, reason="finished")
    with m.server.state.engine.connect() as conn:
        spans = conn.execute(
            select(meter_intervals.c.start_ms, meter_intervals.c.end_ms).where(
                meter_intervals.c.container_id == m.container_id
            )
        ).all()
        assert check_ledger(conn) == []
    assert [(s - T0, e - T0) for s, e in spans] == [(0, 50_000)]
