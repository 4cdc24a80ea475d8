"""The call lifecycle through the services, on SQLite and PostgreSQL:
create_calls → claim_inputs → record_outputs, retries, requeues, cancellation."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import Connection, event, func, select, text, update

from crucible.core.metering import MS_PER_HOUR
from crucible.errors import NotFoundError
from crucible.protocol.calls import CallsCreate, InputItem
from crucible.protocol.common import ErrorInfo, Payload
from crucible.protocol.containers import InputAssignment, OutputItem
from crucible.server.auth import Principal
from crucible.server.services import calls as svc
from crucible.server.services.apps import get_function_row
from crucible.server.services.containers import exchange_step, load_container_facts
from crucible.server.services.hosts import end_container
from crucible.server.store.tables import calls, containers

from server_testlib import World

# Like the server, remember the group of each claimed call so recording reads nothing more.
CLAIMED_GROUPS: dict[str, str | None] = {}


@pytest.fixture(autouse=True)
def _fresh_claim_memory() -> None:
    CLAIMED_GROUPS.clear()


def claim(conn: Connection, container_id: str, want: int, now_ms: int) -> list[InputAssignment]:
    """What a worker's exchange does to get inputs."""
    facts = load_container_facts(conn, container_id)
    return svc.claim_inputs(
        conn,
        container_id,
        facts.function_id,
        want,
        facts.timeout_s,
        now_ms,
        skip_locked=conn.dialect.name == "postgresql",
        groups=CLAIMED_GROUPS,
    )


def record(
    conn: Connection,
    container_id: str,
    outputs: list[OutputItem],
    now_ms: int,
    *,
    remember: bool = True,
) -> list[str]:
    """What a worker's exchange does with finished inputs (``remember=False``: as a server
    that did not hand them out, e.g. after a restart)."""
    facts = load_container_facts(conn, container_id)  # the function's retries, typed
    return svc.record_outputs(
        conn,
        container_id,
        outputs,
        facts.rate_micros_per_hour,
        facts.retries,
        now_ms,
        1 << 20,
        facts.account_id,
        groups=CLAIMED_GROUPS if remember else None,
    )


def ok(call_id: str, attempt: int, data: bytes = b"result", exec_ms: int = 0) -> OutputItem:
    return OutputItem(
        call_id=call_id,
        attempt=attempt,
        status="succeeded",
        result=Payload.inline(data),
        exec_us=exec_ms * 1000,
    )


def failed(call_id: str, attempt: int, message: str = "boom", status: str = "failed") -> OutputItem:
    return OutputItem(
        call_id=call_id,
        attempt=attempt,
        status=status,
        error=ErrorInfo(code="remote_error", message=message, exc_type="ValueError"),
    )


def row(conn: Connection, call_id: str) -> Any:
    return conn.execute(select(calls).where(calls.c.id == call_id)).one()


def test_happy_path_and_group_delivery(world: World) -> None:
    fid = world.function(timeout_s=30)
    cid = world.container(fid)
    t = world.now_ms
    with world.engine.begin() as conn:
        ids = world.submit(conn, fid, 3, group_id="g")
    assert len(set(ids)) == 3 and ids == sorted(ids)  # ids sort in input order

    with world.engine.begin() as conn:
        first = claim(conn, cid, 2, t + 10)
        rest = claim(conn, cid, 5, t + 11)
        assert claim(conn, cid, 5, t + 12) == []
        assert claim(conn, cid, 0, t + 12) == []
    assert [a.call_id for a in first + rest] == ids  # oldest first
    assert [a.attempt for a in first + rest] == [1, 1, 1]
    assert [a.args.raw() for a in first + rest] == [b"\x00", b"\x01", b"\x02"]
    assert {a.timeout_s for a in first} == {30.0}
    with world.engine.connect() as conn:
        r0 = row(conn, ids[0])
        assert (r0.state, r0.container_id, r0.attempts) == ("running", cid, 1)
        assert r0.started_ms == t + 10
        assert r0.deadline_ms >= t + 10 + 30_000  # at least the timeout (a batch may get more)

    with world.engine.begin() as conn:
        keys = record(
            conn,
            cid,
            [
                ok(ids[0], 1, b"r0", exec_ms=1500),
                failed(ids[1], 1),
                failed(ids[2], 1, "slow", status="timed_out"),
            ],
            t + 2000,
        )
        rate = load_container_facts(conn, cid).rate_micros_per_hour
    assert set(keys) == {f"call:{i}" for i in ids} | {"group:g"}
    with world.engine.connect() as conn:
        done = {i: svc.get_call(conn, world.principal, i) for i in ids}
    good, bad, slow = (done[i] for i in ids)
    assert good.state == "succeeded" and good.error is None
    assert good.result is not None and good.result.raw() == b"r0"
    assert good.exec_ms == 1500 and good.finished_ms == t + 2000
    assert good.cost_micros == 1500 * rate // MS_PER_HOUR
    assert bad.state == "failed" and bad.result is None
    assert bad.error is not None
    assert (bad.error.message, bad.error.exc_type) == ("boom", "ValueError")
    assert slow.state == "timed_out"
    assert slow.error is not None and slow.error.code == "function_timeout"

    # Each finished call of a group is delivered once; indices re-read on demand.
    with world.engine.begin() as conn:
        got = svc.group_results(conn, world.principal, "g", 2, None)
        assert [c.index for c in got.results] == [0, 1] and got.outstanding == 0
        got = svc.group_results(conn, world.principal, "g", 10, None)
        assert [c.index for c in got.results] == [2]
        assert svc.group_results(conn, world.principal, "g", 10, None).results == []
        again = svc.group_results(conn, world.principal, "g", 10, [0, 2])
        assert sorted(c.index for c in again.results) == [0, 2]


def test_idempotency_keys_return_the_same_call(world: World) -> None:
    fid = world.function()
    with world.engine.begin() as conn:
        first = world.submit(conn, fid, keys=["a", None, "b"])
    with world.engine.begin() as conn:
        second = world.submit(conn, fid, keys=["b", "a", "c", None])
    assert second[0] == first[2] and second[1] == first[0]
    assert len(set(first) | set(second)) == 5
    # Keys belong to an account: another tenant's "a" is another call.
    other = World.create(world.engine, "globex")
    with world.engine.begin() as conn:
        [theirs] = other.submit(conn, other.function(), keys=["a"])
    assert theirs not in first
    with world.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(calls)).scalar_one() == 6
    # A finished call is still found by its key (a retried request after a lost answer).
    cid = world.container(fid)
    with world.engine.begin() as conn:
        given = claim(conn, cid, 10, world.now_ms)
        record(conn, cid, [ok(a.call_id, a.attempt) for a in given], world.now_ms + 1)
    with world.engine.begin() as conn:
        assert world.submit(conn, fid, keys=["a"]) == [first[0]]
        assert svc.get_call(conn, world.principal, first[0]).state == "succeeded"


def test_a_keyed_input_is_inserted_without_reading_its_key_first(world: World) -> None:
    """Issue 15: a keyed input costs one statement (the insert, whose conflict finds a known
    key), not a read of the key and then the insert; a retry still gets the earlier call,
    repeats of a known key in one request too, and so does a retry whose payload no longer
    decodes (its blob is gone)."""
    fid = world.function()
    with world.engine.begin() as conn:
        [first] = world.submit(conn, fid, keys=["k"])
    seen: list[str] = []

    def note(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
        seen.append(statement)

    event.listen(world.engine, "before_cursor_execute", note)
    try:
        with world.engine.begin() as conn:
            fresh = world.submit(conn, fid, keys=["new"])
    finally:
        event.remove(world.engine, "before_cursor_execute", note)
    key_reads = [
        s for s in seen if s.lstrip().upper().startswith("SELECT") and "idempotency_key" in s
    ]
    assert key_reads == [] and fresh != [first]
    with world.engine.begin() as conn:
        assert world.submit(conn, fid, keys=["k", None, "k"])[::2] == [first, first]
        fn = get_function_row(conn, world.principal, fid)
        gone = Payload(ref="0" * 64, size=10)
        req = CallsCreate(inputs=[InputItem(args=gone, idempotency_key="k")])
        assert svc.create_calls(conn, world.principal, fn, req, world.now_ms, 1 << 20) == [first]
        req = CallsCreate(inputs=[InputItem(args=gone, idempotency_key="unknown")])
        with pytest.raises(NotFoundError):
            svc.create_calls(conn, world.principal, fn, req, world.now_ms, 1 << 20)
    with world.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(calls)).scalar_one() == 3


def test_stale_outputs_are_dropped(world: World) -> None:
    fid = world.function()
    c1, c2 = world.container(fid), world.container(fid)
    t = world.now_ms
    with world.engine.begin() as conn:
        [call_id, other_id] = world.submit(conn, fid, 2)
        assert [a.call_id for a in claim(conn, c1, 1, t)] == [call_id]
        # c1's host is lost: the call goes back to the queue for free.
        keys = svc.requeue_calls_of_container(
            conn, c1, t + 1, crashed=False, message="host lost", max_infra_requeues=5
        )
        assert keys == [f"fn:{fid}"]
        # The old attempt's output arrives late: dropped. (Wake-up keys for dropped outputs
        # are allowed: a woken waiter re-reads the store.)
        record(conn, c1, [ok(call_id, 1)], t + 2)
        assert row(conn, call_id).state == "queued"
        [again] = claim(conn, c2, 1, t + 3)
        assert (again.call_id, again.attempt) == (call_id, 2)
        # Outputs from the wrong container, or for the wrong attempt, or for unknown calls.
        record(conn, c1, [ok(call_id, 2)], t + 4)
        record(conn, c2, [ok(call_id, 1), failed(call_id, 1)], t + 4)
        record(conn, c1, [failed(call_id, 2)], t + 4)
        record(conn, c2, [failed("ca-unknown", 1), failed(other_id, 1)], t + 4)
        assert row(conn, call_id).state == "running" and row(conn, other_id).state == "queued"
        # The right one lands, once: a duplicate afterwards changes nothing.
        assert record(conn, c2, [ok(call_id, 2, b"right")], t + 5) == [f"call:{call_id}"]
        record(conn, c2, [failed(call_id, 2)], t + 6)
        record(conn, c2, [ok(call_id, 2, b"late duplicate")], t + 6)
        r = row(conn, call_id)
        assert (r.state, r.output, r.finished_ms, r.attempts) == ("succeeded", b"right", t + 5, 2)

        # A call cancelled while running: its container is to be stopped and its output dropped.
        [given] = claim(conn, c2, 1, t + 7)
        info, keys, stop = svc.cancel_call(conn, world.principal, other_id, t + 8)
        assert info.state == "cancelled" and stop == c2 and keys == [f"call:{other_id}"]
        assert info.error is not None and info.error.code == "call_cancelled"
        record(conn, c2, [ok(other_id, given.attempt)], t + 9)
        record(conn, c2, [failed(other_id, given.attempt)], t + 9)
        r = row(conn, other_id)
        assert (r.state, r.output, r.finished_ms) == ("cancelled", None, t + 8)


def test_failures_retry_with_backoff_then_fail(world: World) -> None:
    fid = world.function(max_retries=2, initial_delay_s=1.0, backoff_coefficient=3.0)
    cid = world.container(fid)
    t = world.now_ms
    with world.engine.begin() as conn:
        [call_id] = world.submit(conn, fid, 1)
        [a] = claim(conn, cid, 1, t)
        assert record(conn, cid, [failed(call_id, a.attempt, "first")], t + 100) == [
            f"fn:{fid}",
            f"retry:{fid}:1000",  # its containers are woken again when the delay ends
        ]
        r = row(conn, call_id)
        assert (r.state, r.container_id, r.next_attempt_ms) == ("queued", None, t + 100 + 1000)
        assert claim(conn, cid, 1, t + 1099) == []  # still backing off
        [a] = claim(conn, cid, 1, t + 1100)
        assert a.attempt == 2
        record(conn, cid, [failed(call_id, 2, "second")], t + 1200)
        assert row(conn, call_id).next_attempt_ms == t + 1200 + 3000
        assert claim(conn, cid, 1, t + 4199) == []
        [a] = claim(conn, cid, 1, t + 4200)
        assert a.attempt == 3
        keys = record(conn, cid, [failed(call_id, 3, "third")], t + 4300)
        assert keys == [f"call:{call_id}"]
        info = svc.get_call(conn, world.principal, call_id)
    assert (info.state, info.attempts, info.finished_ms) == ("failed", 3, t + 4300)
    assert info.error is not None and info.error.message == "third"
    assert claim_nothing_left(world, cid)


def claim_nothing_left(world: World, cid: str) -> bool:
    with world.engine.begin() as conn:
        return claim(conn, cid, 10, world.now_ms + 10**9) == []


def test_backoff_is_capped_by_max_delay(world: World) -> None:
    fid = world.function(
        max_retries=3, initial_delay_s=2.0, backoff_coefficient=10.0, max_delay_s=5.0
    )
    cid = world.container(fid)
    now = world.now_ms
    delays = []
    with world.engine.begin() as conn:
        [call_id] = world.submit(conn, fid, 1)
        for attempt in (1, 2, 3):
            [a] = claim(conn, cid, 1, now)
            assert a.attempt == attempt
            record(conn, cid, [failed(call_id, attempt, status="timed_out")], now)
            r = row(conn, call_id)
            delays.append(r.next_attempt_ms - now)
            now = r.next_attempt_ms
        [a] = claim(conn, cid, 1, now)
        record(conn, cid, [failed(call_id, 4, status="timed_out")], now)
        assert row(conn, call_id).state == "timed_out"
    assert delays == [2000, 5000, 5000]


def test_crashed_containers_use_up_retries(world: World) -> None:
    fid = world.function(max_retries=1, initial_delay_s=1.0)
    c1, c2 = world.container(fid), world.container(fid)
    t = world.now_ms
    with world.engine.begin() as conn:
        [call_id] = world.submit(conn, fid, 1)
        claim(conn, c1, 1, t)
        keys = svc.requeue_calls_of_container(
            conn, c1, t + 10, crashed=True, message="killed by OOM", max_infra_requeues=5
        )
        # Its idle containers are woken when the retry's delay ends (1 s) too.
        assert keys == [f"fn:{fid}", f"retry:{fid}:1000"]
        r = row(conn, call_id)
        assert (r.state, r.next_attempt_ms, r.infra_requeues) == ("queued", t + 1010, 0)
        assert r.error["code"] == "container_exited" and r.error["message"] == "killed by OOM"
        [a] = claim(conn, c2, 1, t + 1010)
        assert a.attempt == 2
        keys = svc.requeue_calls_of_container(
            conn, c2, t + 2000, crashed=True, message="killed again", max_infra_requeues=5
        )
        assert keys == [f"call:{call_id}"]
        info = svc.get_call(conn, world.principal, call_id)
    assert info.state == "failed" and info.error is not None
    assert info.error.code == "container_exited" and info.error.message == "killed again"


def test_infrastructure_requeues_are_free_up_to_a_limit(world: World) -> None:
    fid = world.function(max_retries=0)
    t = world.now_ms
    with world.engine.begin() as conn:
        [call_id, untouched] = world.submit(conn, fid, 2)
    for attempt in (1, 2, 3):
        cid = world.container(fid)
        with world.engine.begin() as conn:
            [a] = claim(conn, cid, 1, t)
            assert (a.call_id, a.attempt) == (call_id, attempt)
            svc.requeue_calls_of_container(
                conn, cid, t, crashed=False, message="host lost", max_infra_requeues=2
            )
            r = row(conn, call_id)
            if attempt < 3:
                assert (r.state, r.next_attempt_ms, r.infra_requeues) == ("queued", t, attempt)
    assert r.state == "failed" and r.error["code"] == "container_exited"
    with world.engine.connect() as conn:
        assert row(conn, untouched).state == "queued"  # never on those containers

    # After a free requeue a real failure still counts as the first one (max_retries=1: retried).
    fid = world.function("g", max_retries=1, initial_delay_s=0)
    with world.engine.begin() as conn:
        [call_id] = world.submit(conn, fid, 1)
    c1 = world.container(fid)
    with world.engine.begin() as conn:
        claim(conn, c1, 1, t)
        svc.requeue_calls_of_container(
            conn, c1, t, crashed=False, message="host lost", max_infra_requeues=5
        )
    c2 = world.container(fid)
    with world.engine.begin() as conn:
        [a] = claim(conn, c2, 1, t)
        record(conn, c2, [failed(call_id, a.attempt)], t)
        assert row(conn, call_id).state == "queued"
        [a] = claim(conn, c2, 1, t)
        record(conn, c2, [failed(call_id, a.attempt)], t)
        r = row(conn, call_id)
        assert (r.state, r.attempts, r.infra_requeues) == ("failed", 3, 1)


def test_requeue_touches_only_that_containers_running_calls(world: World) -> None:
    fid = world.function()
    c1, c2 = world.container(fid), world.container(fid)
    t = world.now_ms
    with world.engine.begin() as conn:
        ids = world.submit(conn, fid, 4)
        claim(conn, c1, 1, t)
        claim(conn, c2, 1, t)
        [done] = claim(conn, c1, 1, t)
        record(conn, c1, [ok(done.call_id, 1)], t)
        svc.requeue_calls_of_container(conn, c1, t, crashed=True, message="x", max_infra_requeues=5)
        states = [row(conn, i).state for i in ids]
    assert states == ["failed", "running", "succeeded", "queued"]


def test_cancel_queued_and_finished_calls(world: World) -> None:
    fid = world.function()
    cid = world.container(fid)
    t = world.now_ms
    with world.engine.begin() as conn:
        [queued, finished] = world.submit(conn, fid, 2)
        info, keys, stop = svc.cancel_call(conn, world.principal, queued, t)
        assert (info.state, stop, keys) == ("cancelled", None, [f"call:{queued}"])
        [a] = claim(conn, cid, 5, t)  # a cancelled call is never handed out
        assert a.call_id == finished
        record(conn, cid, [ok(finished, 1)], t)
        info, keys, stop = svc.cancel_call(conn, world.principal, finished, t + 1)
        assert (info.state, keys, stop) == ("succeeded", [], None)
        with pytest.raises(NotFoundError):
            svc.cancel_call(conn, Principal("ac-other", "user"), finished, t)
        with pytest.raises(NotFoundError):
            svc.get_call(conn, Principal("ac-other", "user"), finished)


def test_unschedulable_and_timeout_backstops(world: World) -> None:
    fid = world.function(max_retries=0)
    cid = world.container(fid)
    t = world.now_ms
    with world.engine.begin() as conn:
        [running, queued] = world.submit(conn, fid, 2, group_id="g")
        claim(conn, cid, 1, t)
        keys = svc.fail_queued_calls(conn, fid, "resources_unsatisfiable", "no host fits", t)
        assert set(keys) == {f"call:{queued}", "group:g"}
        err = ErrorInfo(code="function_timeout", message="past the deadline")
        assert set(svc.record_timeout(conn, running, err, t)) == {f"call:{running}", "group:g"}
        assert svc.record_timeout(conn, running, err, t) == []  # already finished
        q, r = (
            svc.get_call(conn, world.principal, queued),
            svc.get_call(conn, world.principal, running),
        )
    assert q.state == "failed" and q.error is not None and q.error.code == "resources_unsatisfiable"
    assert r.state == "timed_out" and r.error is not None and r.error.code == "function_timeout"


def test_concurrent_claims_never_share_a_call(world: World, database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite serialises writers; SKIP LOCKED claiming is PostgreSQL's")
    fid = world.function()
    c1, c2 = world.container(fid), world.container(fid)
    with world.engine.begin() as conn:
        ids = world.submit(conn, fid, 5)
    with world.engine.begin() as one, world.engine.begin() as two:
        got1 = claim(one, c1, 3, world.now_ms)  # uncommitted, rows locked
        got2 = claim(two, c2, 5, world.now_ms)  # skips them instead of waiting
    assert [a.call_id for a in got1] == ids[:3]
    assert [a.call_id for a in got2] == ids[3:]


def test_outputs_recorded_by_a_server_that_did_not_hand_them_out(world: World) -> None:
    """After a restart (or on another replica) the claim memory is empty: same result."""
    fid = world.function()
    cid = world.container(fid)
    with world.engine.begin() as conn:
        [call_id] = world.submit(conn, fid, 1, group_id="g")
        claim(conn, cid, 1, world.now_ms)
        keys = record(conn, cid, [ok(call_id, 1)], world.now_ms, remember=False)
        assert set(keys) == {f"call:{call_id}", "group:g"}
        assert row(conn, call_id).state == "succeeded"
        # Outputs for calls it never handed out, or that do not exist, are dropped.
        [queued] = world.submit(conn, fid, 1)
        record(conn, cid, [ok(queued, 1), ok("ca-unknown", 1)], world.now_ms, remember=False)
        assert row(conn, queued).state == "queued"


def test_concurrent_requests_with_one_idempotency_key(world: World, database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite serialises writers; the race needs concurrent transactions")
    fid = world.function()
    outcome: dict[str, Any] = {}

    def retry_of_the_same_request() -> None:
        try:
            with world.engine.begin() as conn:
                outcome["ids"] = world.submit(conn, fid, keys=["k"])
        except Exception as exc:  # what the API would turn into a 500
            outcome["error"] = exc

    with world.engine.connect() as first:
        tx = first.begin()
        [mine] = world.submit(first, fid, keys=["k"])
        other = threading.Thread(target=retry_of_the_same_request)
        other.start()
        # Commit only once the retry is waiting on the first request's uncommitted key.
        with world.engine.connect() as watch:
            for _ in range(1000):
                waiting = watch.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO calls%'"
                    )
                ).scalar_one()
                watch.rollback()  # statistics are a snapshot per transaction
                if waiting or not other.is_alive():
                    break
                threading.Event().wait(0.01)
        tx.commit()
    other.join(30)
    assert outcome.get("ids") == [mine], outcome.get("error")


def test_a_claim_hands_out_the_oldest_inputs_with_a_deadline_for_the_batch(
    world: World,
) -> None:
    """PostgreSQL claims in one UPDATE ... RETURNING (SQLite: a SELECT, then an UPDATE): the
    oldest queued inputs, in order, their attempt numbers, and a server-side deadline that
    allows for each input claimed (not for each one wanted)."""
    fid = world.function()
    c1 = world.container(fid)
    with world.engine.begin() as conn:
        ids = world.submit(conn, fid, 3)
        timeout_ms = int(load_container_facts(conn, c1).timeout_s * 1000)
    with world.engine.begin() as conn:
        got = claim(conn, c1, 2, world.now_ms)
    assert [(a.call_id, a.attempt) for a in got] == [(ids[0], 1), (ids[1], 1)]
    with world.engine.begin() as conn:
        last = claim(conn, c1, 5, world.now_ms)  # wants 5, one is left
        assert claim(conn, c1, 5, world.now_ms) == []
    assert [(a.call_id, a.attempt) for a in last] == [(ids[2], 1)]
    with world.engine.connect() as conn:
        rows = {i: row(conn, i) for i in ids}
    assert {r.state for r in rows.values()} == {"running"}
    assert {r.attempts for r in rows.values()} == {1}
    assert rows[ids[0]].deadline_ms == world.now_ms + 2 * timeout_ms
    assert rows[ids[2]].deadline_ms == world.now_ms + timeout_ms


def test_inputs_are_not_handed_to_a_container_that_ended_while_its_worker_waited(
    world: World,
) -> None:
    """Found by the 10,000-call chaos run: a worker parked on a replica died with its SIGKILLed
    agent; the restarted agent's report ended its container (requeueing its calls), and a call
    then handed to the dead worker's still-parked request stayed running on the stopped
    container until its timeout (the call failed with function_timeout)."""
    fid = world.function()
    gone, live = world.container(fid), world.container(fid)
    with world.engine.begin() as conn:
        conn.execute(update(containers).where(containers.c.id == gone).values(state="stopped"))
        conn.execute(update(containers).where(containers.c.id == live).values(state="running"))
    handed: dict[str, list[InputAssignment]] = {}
    with world.engine.begin() as conn:
        fn = get_function_row(conn, world.principal, fid)
        req = CallsCreate(inputs=[InputItem(args=Payload.inline(b"x")) for _ in range(3)])
        ids = svc.create_calls(
            conn,
            world.principal,
            fn,
            req,
            world.now_ms,
            1 << 20,
            handoff=[(gone, 2), (live, 1)],
            timeout_s=60.0,
            handed=handed,
        )
    assert {c: [a.call_id for a in got] for c, got in handed.items()} == {live: [ids[0]]}
    with world.engine.connect() as conn:
        got = [(row(conn, i).state, row(conn, i).container_id) for i in ids]
    assert got == [("running", live), ("queued", None), ("queued", None)]


def test_a_container_ended_during_an_exchange_gets_back_what_that_exchange_claimed(
    world: World, database_url: str
) -> None:
    """The agent's report ends a container (requeueing its running calls) while the worker's
    exchange is claiming inputs for it: the end waits for the claim to commit and requeues
    the claimed call too. Without the exchange's lock on the container row, the end saw no
    running call and the claimed one stayed running on a stopped container until its
    timeout."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite serialises writers; the race needs concurrent transactions")
    fid = world.function()
    cid = world.container(fid)
    with world.engine.begin() as conn:
        conn.execute(update(containers).where(containers.c.id == cid).values(state="running"))
        [call_id] = world.submit(conn, fid, 1)
        facts = load_container_facts(conn, cid)
    outcome: dict[str, Any] = {}

    def agent_report_ends_it() -> None:
        try:
            with world.engine.begin() as conn:
                outcome["keys"] = end_container(
                    conn,
                    cid,
                    world.now_ms,
                    exit_code=None,
                    reason="lost",
                    message="the agent no longer runs this container",
                    crashed=False,
                    max_infra_requeues=3,
                    meter_interval_ms=30_000,
                )
        except Exception as exc:
            outcome["error"] = exc

    with world.engine.connect() as first:
        tx = first.begin()
        reply, _ = exchange_step(
            first,
            facts,
            [],
            1,
            world.now_ms,
            inline_max=1 << 20,
            skip_locked=True,
            groups={},
            touched_ms={cid: world.now_ms},
        )
        assert [a.call_id for a in reply.inputs] == [call_id]
        other = threading.Thread(target=agent_report_ends_it)
        other.start()
        # Commit the claim once the end waits on it (or has already finished without waiting).
        with world.engine.connect() as watch:
            for _ in range(1000):
                waiting = watch.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock' AND query ILIKE 'UPDATE containers%'"
                    )
                ).scalar_one()
                watch.rollback()
                if waiting or not other.is_alive():
                    break
                threading.Event().wait(0.01)
        tx.commit()
    other.join(30)
    assert "error" not in outcome, outcome.get("error")
    with world.engine.connect() as conn:
        r = row(conn, call_id)
    assert (r.state, r.container_id) == ("queued", None)
