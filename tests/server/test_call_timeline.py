"""A call's timeline shows every attempt: its phases, how it ended (preempted, host lost,
failed, timed out, ...), where it ran and what it cost. Through the services, on SQLite and
PostgreSQL, with the times given (no clock)."""

from __future__ import annotations

from sqlalchemy import select
from test_calls_lifecycle import claim, failed, ok, record

from crucible.core.metering import MS_PER_HOUR
from crucible.protocol.common import ErrorInfo
from crucible.server.services import calls as svc
from crucible.server.services.hosts import end_container
from crucible.server.services.timeline import call_timeline
from crucible.server.store.tables import containers

from server_testlib import World


def rate_of(world: World, container_id: str) -> int:
    with world.engine.connect() as conn:
        return int(
            conn.execute(
                select(containers.c.rate_micros_per_hour).where(containers.c.id == container_id)
            ).scalar_one()
        )


def test_a_preempted_then_requeued_call_shows_both_attempts(world: World) -> None:
    fid = world.function(timeout_s=600)
    c1, c2 = world.container(fid), world.container(fid)
    rate = rate_of(world, c1)
    assert rate > 0
    t = world.now_ms
    with world.engine.begin() as conn:
        [call_id] = world.submit(conn, fid, 1)
        claim(conn, c1, 1, t + 500)
        # The lease is preempted after 12 s of running: the call goes back to the queue.
        svc.requeue_preempted_calls(conn, c1, rate, t + 12_500)
        [a] = claim(conn, c2, 1, t + 14_000)
        assert a.attempt == 2
        record(conn, c2, [ok(call_id, 2, exec_ms=1000)], t + 15_000)
        tl = call_timeline(conn, world.principal, call_id, t + 20_000)

    assert (tl.state, tl.attempts, tl.preemptions) == ("succeeded", 2, 1)
    first, second = tl.history
    assert (first.attempt, first.outcome, first.container_id) == (1, "preempted", c1)
    assert (first.started_ms, first.ended_ms) == (t + 500, t + 12_500)
    assert first.host_id == world.host_id
    assert first.cost_micros == rate * 12_000 // MS_PER_HOUR
    assert (second.attempt, second.outcome, second.container_id) == (2, "succeeded", c2)
    assert second.cost_micros == rate * 1000 // MS_PER_HOUR
    assert tl.cost_micros == first.cost_micros + second.cost_micros
    # The second attempt waited from the preemption, not from when the call was made.
    queued = [p for p in tl.phases if p.phase == "queued" and p.attempt == 2]
    assert [(p.start_ms, p.end_ms) for p in queued] == [(t + 12_500, t + 14_000)]
    assert "preemption" in queued[0].detail
    assert tl.phases[0].start_ms == t and tl.phases[0].attempt == 1
    running = [p for p in tl.phases if p.phase == "running"]
    assert [(p.attempt, p.ms) for p in running] == [(1, 12_000), (2, 1_000)]
    assert "preempted" in running[0].detail
    assert (tl.container_id, tl.host_id) == (c2, world.host_id)


def test_failures_host_loss_and_timeouts_are_attempts_with_their_outcome(world: World) -> None:
    fid = world.function(max_retries=2, initial_delay_s=1.0)  # the host loss is free
    cs = [world.container(fid) for _ in range(4)]
    t = world.now_ms
    with world.engine.begin() as conn:
        [call_id] = world.submit(conn, fid, 1)
        claim(conn, cs[0], 1, t)
        record(conn, cs[0], [failed(call_id, 1, "boom")], t + 100)
        claim(conn, cs[1], 1, t + 1100)
        svc.requeue_calls_of_container(
            conn,
            cs[1],
            t + 1200,
            crashed=False,
            message="host lost",
            max_infra_requeues=5,
            reason="host_lost",
        )
        claim(conn, cs[2], 1, t + 1300)
        err = ErrorInfo(code="function_timeout", message="past its deadline")
        svc.record_timeout(conn, call_id, err, t + 1400)
        [a] = claim(conn, cs[3], 1, t + 10_000)
        assert a.attempt == 4
        mid = call_timeline(conn, world.principal, call_id, t + 10_500)
        record(conn, cs[3], [failed(call_id, 4, "final")], t + 11_000)
        tl = call_timeline(conn, world.principal, call_id, t + 20_000)

    assert [(h.attempt, h.outcome) for h in mid.history] == [
        (1, "failed"),
        (2, "host_lost"),
        (3, "timed_out"),
        (4, "running"),
    ]
    assert mid.history[-1].ended_ms is None
    assert [(h.attempt, h.outcome, h.container_id) for h in tl.history] == [
        (1, "failed", cs[0]),
        (2, "host_lost", cs[1]),
        (3, "timed_out", cs[2]),
        (4, "failed", cs[3]),
    ]
    assert tl.history[0].error is not None and tl.history[0].error.message == "boom"
    assert tl.history[2].error is not None and tl.history[2].error.code == "function_timeout"
    assert tl.history[3].error is not None and tl.history[3].error.message == "final"
    # The call's cost is the sum of its attempts' costs.
    assert tl.cost_micros == sum(h.cost_micros or 0 for h in tl.history)
    assert {p.attempt for p in tl.phases} == {1, 2, 3, 4}


def test_a_call_requeued_then_cancelled_ends_waiting(world: World) -> None:
    fid = world.function()
    cid = world.container(fid)
    rate = rate_of(world, cid)
    t = world.now_ms
    with world.engine.begin() as conn:
        [call_id] = world.submit(conn, fid, 1)
        claim(conn, cid, 1, t)
        svc.requeue_preempted_calls(conn, cid, rate, t + 3000)
        waiting = call_timeline(conn, world.principal, call_id, t + 4000)
        svc.cancel_call(conn, world.principal, call_id, t + 5000)
        tl = call_timeline(conn, world.principal, call_id, t + 9000)

    assert [h.outcome for h in waiting.history] == ["preempted"]
    assert waiting.phases[-1].phase == "queued" and waiting.phases[-1].attempt == 2
    assert (waiting.phases[-1].start_ms, waiting.phases[-1].end_ms) == (t + 3000, t + 4000)
    assert waiting.container_id is None
    last = tl.phases[-1]
    assert (last.phase, last.start_ms, last.end_ms) == ("queued", t + 3000, t + 5000)
    assert "cancelled" in last.detail


def test_a_call_that_ran_once_has_one_attempt(world: World) -> None:
    fid = world.function()
    cid = world.container(fid)
    t = world.now_ms
    with world.engine.begin() as conn:
        [call_id] = world.submit(conn, fid, 1)
        queued = call_timeline(conn, world.principal, call_id, t + 100)
        claim(conn, cid, 1, t + 200)
        record(conn, cid, [ok(call_id, 1, exec_ms=50)], t + 300)
        tl = call_timeline(conn, world.principal, call_id, t + 400)
    assert queued.history == [] and [p.phase for p in queued.phases] == ["queued"]
    assert [(h.attempt, h.outcome, h.exec_ms) for h in tl.history] == [(1, "succeeded", 50)]
    assert tl.phases[-1].phase == "running" and tl.phases[-1].detail == "ran 50 ms"


def test_an_attempt_on_a_lost_host_ends_and_is_costed_at_its_last_sync(world: World) -> None:
    """The container is metered up to the host's last sync, not to when the host was found
    silent; its running call's attempt ends, and costs, there too (it showed 2-3 times what
    the ledger charged: the silence before the loss)."""
    fid = world.function()
    cid = world.container(fid)
    rate = rate_of(world, cid)
    t = world.now_ms
    with world.engine.begin() as conn:
        [call_id] = world.submit(conn, fid, 1)
        claim(conn, cid, 1, t)
        end_container(
            conn,
            cid,
            t + 20_000,  # found silent 15 s after its last sync
            exit_code=None,
            reason="host_lost",
            message="host stopped heartbeating",
            crashed=False,
            max_infra_requeues=5,
            meter_interval_ms=30_000,
            stopped_ms=t + 5_000,
        )
        tl = call_timeline(conn, world.principal, call_id, t + 21_000)
    [lost] = tl.history
    assert (lost.outcome, lost.ended_ms) == ("host_lost", t + 5_000)
    assert lost.cost_micros == rate * 5_000 // MS_PER_HOUR > 0
    assert tl.cost_micros == lost.cost_micros


def test_a_call_cancelled_with_its_app_costs_its_attempt(world: World) -> None:
    """Ctrl-C, or the end of `crucible run`, stops the app: a running call's cost showed '-'
    though its container was billed (a call cancelled on its own already counted it)."""
    fid = world.function()
    cid = world.container(fid)
    rate = rate_of(world, cid)
    t = world.now_ms
    with world.engine.begin() as conn:
        running, queued = world.submit(conn, fid, 2)
        claim(conn, cid, 1, t)
        svc.cancel_queued_calls_of_app(conn, world.app_id, t + 3_000)
        ran = call_timeline(conn, world.principal, running, t + 4_000)
        waited = call_timeline(conn, world.principal, queued, t + 4_000)
    assert ran.state == waited.state == "cancelled"
    assert ran.cost_micros == rate * 3_000 // MS_PER_HOUR > 0
    assert not waited.cost_micros
