"""Schedules in the control plane, in-process, with the clock and the scheduler's tick driven
by hand: one call per tick, missed ticks run once, two schedulers on one store still make one
call, a redeploy keeps the schedule's phase, stopping the deployment ends it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from crucible.server.scheduler.loop import SchedulerLoop
from crucible.server.store.tables import calls

from server_testlib import MakeServer, ManualClock, ServerUnderTest

T0 = 1_800_000_000_000  # ms; far from any real clock


def deploy(server: ServerUnderTest, token: str, bundle: str, **spec: Any) -> dict[str, Any]:
    started = server.ok("POST", "/v1/deployments", token=token, json={"name": "cron"})
    body = {"name": "tick", "code": {"bundle": bundle, "module": "m", "qualname": "f"}, **spec}
    server.ok(
        "POST", f"/v1/apps/{started['app_id']}/functions", token=token, json={"functions": [body]}
    )
    return dict(
        server.ok(
            "POST", "/v1/deployments/cron/activate", token=token, json={"app_id": started["app_id"]}
        )
    )


def scheduled_calls(server: ServerUnderTest) -> list[Any]:
    with server.state.engine.connect() as conn:
        return list(
            conn.execute(select(calls).where(calls.c.tick_ms.is_not(None)).order_by(calls.c.id))
        )


EVERY_MINUTE = {"schedule": {"kind": "period", "period_s": 60}}


def test_one_call_per_tick_and_missed_ticks_run_once(server: ServerUnderTest) -> None:
    clock = ManualClock(T0)
    server.state.clock = clock
    alice = server.tenant("alice")
    info = deploy(server, alice.token, server.put_blob(alice.token), **EVERY_MINUTE)
    [sched] = info["schedules"]
    assert sched["function"] == "tick" and sched["next_run_ms"] == T0 + 60_000
    assert sched["schedule"] == "every 60 s"
    loop = SchedulerLoop(server.state)

    loop.tick()
    assert scheduled_calls(server) == []  # not due yet
    clock.now = T0 + 60_000
    loop.tick()
    loop.tick()  # the same instant again: nothing more
    [first] = scheduled_calls(server)
    assert first.tick_ms == T0 + 60_000 and first.account_id == alice.account_id
    shown = server.ok("GET", f"/v1/calls/{first.id}", token=alice.token)
    assert shown["tick_ms"] == T0 + 60_000

    # The exchange was down for an hour: one call for the missed ticks, then the grid resumes.
    clock.now = T0 + 3_660_000 + 5
    loop.tick()
    assert len(scheduled_calls(server)) == 2
    info = server.ok("GET", "/v1/deployments/cron", token=alice.token)
    assert info["schedules"][0]["next_run_ms"] == T0 + 3_720_000
    assert info["schedules"][0]["last_call_id"] == scheduled_calls(server)[-1].id


def test_two_schedulers_on_one_store_make_one_call_per_tick(make_server: MakeServer) -> None:
    a, b = make_server(), make_server()
    clock = ManualClock(T0)
    a.state.clock = b.state.clock = clock
    alice = a.tenant("alice")
    deploy(a, alice.token, a.put_blob(alice.token), **EVERY_MINUTE)
    for step in range(1, 6):
        clock.now = T0 + step * 60_000
        SchedulerLoop(a.state).tick()
        SchedulerLoop(b.state).tick()
    ticks = [c.tick_ms for c in scheduled_calls(a)]
    assert ticks == [T0 + s * 60_000 for s in range(1, 6)]


def test_redeploy_keeps_the_phase_a_change_restarts_it_stop_ends_it(
    server: ServerUnderTest,
) -> None:
    clock = ManualClock(T0)
    server.state.clock = clock
    alice = server.tenant("alice")
    bundle = server.put_blob(alice.token)
    deploy(server, alice.token, bundle, **EVERY_MINUTE)
    clock.now = T0 + 30_000
    info = deploy(server, alice.token, bundle, **EVERY_MINUTE)
    assert info["version"] == 2 and info["schedules"][0]["next_run_ms"] == T0 + 60_000
    clock.now = T0 + 40_000
    info = deploy(server, alice.token, bundle, schedule={"kind": "cron", "cron": "0 * * * *"})
    assert info["schedules"][0]["schedule"] == "cron '0 * * * *' (UTC)"
    assert info["schedules"][0]["next_run_ms"] % 3_600_000 == 0
    info = deploy(server, alice.token, bundle)  # no schedule any more
    assert info["schedules"] == []
    deploy(server, alice.token, bundle, **EVERY_MINUTE)
    server.ok("POST", "/v1/deployments/cron/stop", token=alice.token)
    clock.now = T0 + 86_400_000
    SchedulerLoop(server.state).tick()
    assert scheduled_calls(server) == []


def test_bad_schedules_are_refused_with_the_reason(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    app_id = server.new_app(alice.token)
    bundle = server.put_blob(alice.token)
    for schedule, why in (
        ({"kind": "cron", "cron": "61 * * * *"}, "minute 61"),
        ({"kind": "cron", "cron": "* * * * *", "timezone": "Nowhere/Land"}, "time zone"),
        ({"kind": "period", "period_s": 0.1}, "period_s"),
        ({"kind": "period"}, "period"),
    ):
        body = {
            "name": "f",
            "code": {"bundle": bundle, "module": "m", "qualname": "f"},
            "schedule": schedule,
        }
        r = server.request(
            "POST",
            f"/v1/apps/{app_id}/functions",
            token=alice.token,
            json={"functions": [body]},
        )
        assert r.status_code == 400, r.text
        assert why in r.json()["error"]["message"]
