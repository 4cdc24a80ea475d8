"""A call's whole life over HTTP, in-process: builder → control plane → worker exchange."""

from __future__ import annotations

import base64

import pytest
from sqlalchemy import update

from crucible.protocol.accounts import Scope
from crucible.server.services import apps as apps_svc
from crucible.server.store.tables import containers

from server_testlib import ServerUnderTest, error_code


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_call_round_trip_through_the_exchange(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    host = server.tenant("alice", Scope.HOST)
    app_id = server.new_app(alice.token)
    fn = server.new_function(
        alice.token,
        app_id,
        server.put_blob(alice.token),
        retries={"max_retries": 1, "initial_delay_s": 0},
    )
    host_id = server.register_host(host.token)
    cid, ctok = server.place_container(fn, host_id)

    made = server.ok(
        "POST",
        f"/v1/functions/{fn}/calls",
        token=alice.token,
        json={
            "inputs": [{"args": {"data": b64(b"in-0")}}, {"args": {"data": b64(b"in-1")}}],
            "group_id": "map-1",
        },
    )
    assert len(made["call_ids"]) == 2 and made.get("result") is None
    first, second = made["call_ids"]
    assert server.ok("GET", f"/v1/calls/{first}", token=alice.token)["state"] == "queued"

    exchange = f"/v1/containers/{cid}/exchange"
    got = server.ok("POST", exchange, token=ctok, json={"want": 8})["inputs"]
    assert [(i["call_id"], i["attempt"]) for i in got] == [(first, 1), (second, 1)]
    assert [base64.b64decode(i["args"]["data"]) for i in got] == [b"in-0", b"in-1"]
    assert server.ok("GET", f"/v1/calls/{first}", token=alice.token)["state"] == "running"

    outputs = [
        {
            "call_id": first,
            "attempt": 1,
            "status": "succeeded",
            "result": {"data": b64(b"out-0"), "size": 5},
            "exec_us": 2_000,
        },
        {
            "call_id": second,
            "attempt": 1,
            "status": "failed",
            "error": {
                "code": "remote_error",
                "message": "ValueError: odd",
                "exc_type": "ValueError",
            },
        },
    ]
    reply = server.ok("POST", exchange, token=ctok, json={"outputs": outputs, "want": 1})
    # The failed input is retried (max_retries=1, no delay) and comes straight back.
    assert [(i["call_id"], i["attempt"]) for i in reply["inputs"]] == [(second, 2)]

    done = server.ok("GET", f"/v1/calls/{first}", token=alice.token, params={"wait_s": 5})
    assert done["state"] == "succeeded" and base64.b64decode(done["result"]["data"]) == b"out-0"
    assert done["exec_ms"] == 2 and done["attempts"] == 1

    again = [
        {
            "call_id": second,
            "attempt": 2,
            "status": "failed",
            "error": {"code": "remote_error", "message": "ValueError: still odd"},
        }
    ]
    server.ok("POST", exchange, token=ctok, json={"outputs": again, "want": 0})
    failed = server.ok("GET", f"/v1/calls/{second}", token=alice.token)
    assert failed["state"] == "failed" and failed["attempts"] == 2
    assert failed["error"]["message"] == "ValueError: still odd" and "result" not in failed

    results = server.ok("POST", "/v1/groups/map-1/results", token=alice.token, json={})
    assert sorted(r["index"] for r in results["results"]) == [0, 1]
    assert results["outstanding"] == 0
    listed = server.ok("GET", "/v1/calls", token=alice.token, params={"function_id": fn})
    assert {c["id"]: c["state"] for c in listed["calls"]} == {first: "succeeded", second: "failed"}


def test_a_hand_off_lost_on_the_way_is_queued_again(server: ServerUnderTest) -> None:
    """A server that dies after committing a claim, before its reply reaches the worker,
    leaves the call running on a container that never got it. The worker's next request for
    inputs says what it holds, and the call it never received is handed out again, once, as
    the same attempt (its body never ran)."""
    alice = server.tenant("alice")
    host = server.tenant("alice", Scope.HOST)
    app_id = server.new_app(alice.token)
    fn = server.new_function(alice.token, app_id, server.put_blob(alice.token))
    host_id = server.register_host(host.token)
    cid, ctok = server.place_container(fn, host_id)
    made = server.ok(
        "POST",
        f"/v1/functions/{fn}/calls",
        token=alice.token,
        json={"inputs": [{"args": {"data": b64(b"a")}}, {"args": {"data": b64(b"b")}}]},
    )
    first, second = made["call_ids"]
    exchange = f"/v1/containers/{cid}/exchange"
    # The reply carrying both is "lost": the worker never saw it.
    lost = server.ok("POST", exchange, token=ctok, json={"want": 8})["inputs"]
    assert [i["call_id"] for i in lost] == [first, second]
    # The output reporter's requests (no `held`) reconcile nothing.
    server.ok("POST", exchange, token=ctok, json={"want": 0})
    assert server.ok("GET", f"/v1/calls/{first}", token=alice.token)["state"] == "running"
    # The worker holds the second only (say it received it by a later reply): the first
    # comes back to it as attempt 1 again; the second stays where it is.
    again = server.ok("POST", exchange, token=ctok, json={"want": 8, "held": [second]})["inputs"]
    assert [(i["call_id"], i["attempt"]) for i in again] == [(first, 1)]
    # Holding both: nothing is taken back, nothing handed twice.
    held = [first, second]
    assert server.ok("POST", exchange, token=ctok, json={"want": 8, "held": held})["inputs"] == []
    info = server.ok("GET", f"/v1/calls/{first}", token=alice.token)
    assert info["state"] == "running" and info["attempts"] == 1


def test_stopping_an_app_cancels_its_queued_calls(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    app_id = server.new_app(alice.token)
    fn = server.new_function(alice.token, app_id, server.put_blob(alice.token))
    ids = server.new_calls(alice.token, fn, 3)
    stopped = server.ok("POST", f"/v1/apps/{app_id}/stop", token=alice.token)
    assert stopped["state"] == "stopped" and stopped["stopped_ms"] is not None
    for call_id in ids:
        info = server.ok("GET", f"/v1/calls/{call_id}", token=alice.token)
        assert info["state"] == "cancelled" and info["error"]["code"] == "call_cancelled"
    # A stopped app takes no new work, and stopping again changes nothing.
    r = server.request(
        "POST",
        f"/v1/functions/{fn}/calls",
        token=alice.token,
        json={"inputs": [{"args": {"data": "gAQ="}}]},
    )
    assert r.status_code == 404 and error_code(r) == "not_found"
    assert server.ok("POST", f"/v1/apps/{app_id}/stop", token=alice.token) == stopped


def test_cancel_over_http(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    fn = server.new_function(alice.token, server.new_app(alice.token), server.put_blob(alice.token))
    [call_id] = server.new_calls(alice.token, fn)
    cancelled = server.ok("POST", f"/v1/calls/{call_id}/cancel", token=alice.token)
    assert cancelled["state"] == "cancelled"
    assert server.ok("POST", f"/v1/calls/{call_id}/cancel", token=alice.token) == cancelled
    assert (
        server.ok("GET", f"/v1/calls/{call_id}", token=alice.token, params={"wait_s": 30})["state"]
        == "cancelled"
    )  # finished: no waiting


class _Later:
    """A clock ``ms`` ahead of another."""

    def __init__(self, clock: object, ms: int) -> None:
        self._clock, self._ms = clock, ms

    def now_ms(self) -> int:
        return int(self._clock.now_ms()) + self._ms  # type: ignore[attr-defined]


def test_cancelling_one_input_of_a_concurrent_container_requeues_the_others_at_once(
    server: ServerUnderTest,
) -> None:
    """A cancel stops the call's container (a Python function cannot be interrupted); its
    other inputs (a concurrent function's) kept running there until the stop's SIGKILL, and
    were queued again only then, or timed out there."""
    alice = server.tenant("alice")
    host_id = server.register_host(server.tenant("alice", Scope.HOST).token)
    app_id = server.new_app(alice.token)
    fn = server.new_function(alice.token, app_id, server.put_blob(alice.token), max_inputs=3)
    made = server.new_calls(alice.token, fn, 3)
    cid, ctok = server.place_container(fn, host_id)
    got = server.ok("POST", f"/v1/containers/{cid}/exchange", token=ctok, json={"want": 3})
    assert sorted(i["call_id"] for i in got["inputs"]) == sorted(made)
    victim, *others = made
    server.state.clock = _Later(server.state.clock, 60_000)  # they ran a minute
    cancelled = server.ok("POST", f"/v1/calls/{victim}/cancel", token=alice.token)
    assert cancelled["state"] == "cancelled"
    # Its attempt's time is billed with its container's: the call's cost says so.
    assert cancelled["cost_micros"] > 0, cancelled
    for call_id in others:
        shown = server.ok("GET", f"/v1/calls/{call_id}", token=alice.token)
        assert shown["state"] == "queued", shown  # at once, for free
    # The stopping container takes no more work; their next attempt goes elsewhere.
    again = server.ok("POST", f"/v1/containers/{cid}/exchange", token=ctok, json={"want": 3})
    assert again["inputs"] == [] and again["stop"] is True


def test_a_claims_deadline_counts_the_inputs_only_when_they_run_one_after_another(
    server: ServerUnderTest,
) -> None:
    """The server's backstop: a sequential worker runs its claim's inputs in turn, so their
    deadline is one timeout each; a concurrent one runs them at once, so one timeout in all
    (it was multiplied there too: timeout=3 let a call of a claim of 8 run 15 s)."""
    from sqlalchemy import select

    from crucible.server.store.tables import calls

    alice = server.tenant("alice")
    host_id = server.register_host(server.tenant("alice", Scope.HOST).token)
    bundle = server.put_blob(alice.token)
    for extra, per_input in (({}, True), ({"max_inputs": 8}, False)):
        app_id = server.new_app(alice.token, f"app-{per_input}")
        fn = server.new_function(alice.token, app_id, bundle, timeout_s=3, **extra)
        server.new_calls(alice.token, fn, 4)
        cid, ctok = server.place_container(fn, host_id)
        now = server.state.clock.now_ms()
        got = server.ok("POST", f"/v1/containers/{cid}/exchange", token=ctok, json={"want": 8})
        assert len(got["inputs"]) == 4
        with server.state.engine.connect() as conn:
            deadlines = set(
                conn.execute(select(calls.c.deadline_ms).where(calls.c.function_id == fn))
                .scalars()
                .all()
            )
        (deadline,) = deadlines
        expected = 4 * 3_000 if per_input else 3_000
        assert expected <= deadline - now < expected + 2_000, (extra, deadline - now)


def test_the_servers_timeout_backstop_names_the_timeout(server: ServerUnderTest) -> None:
    """A call the worker could not interrupt ended with "the call exceeded its timeout and
    its container was stopped", without the limit the builder set."""
    from crucible.server.scheduler.loop import SchedulerLoop

    from server_testlib import ManualClock

    clock = ManualClock(1_800_000_000_000)
    server.state.clock = clock
    alice = server.tenant("alice")
    host_id = server.register_host(server.tenant("alice", Scope.HOST).token)
    app_id = server.new_app(alice.token)
    fn = server.new_function(alice.token, app_id, server.put_blob(alice.token), timeout_s=3)
    [call_id] = server.new_calls(alice.token, fn)
    cid, ctok = server.place_container(fn, host_id)
    got = server.ok("POST", f"/v1/containers/{cid}/exchange", token=ctok, json={"want": 1})
    assert [i["call_id"] for i in got["inputs"]] == [call_id]
    clock.now += 60_000  # far past its deadline and the grace: stuck in C code, say
    with server.state.engine.begin() as conn:
        SchedulerLoop(server.state)._sweep_timeouts(conn, clock.now)
    shown = server.ok("GET", f"/v1/calls/{call_id}", token=alice.token)
    assert shown["state"] == "timed_out", shown
    assert "timeout of 3 s" in shown["error"]["message"], shown["error"]


def test_an_app_counts_its_containers_until_they_have_stopped(server: ServerUnderTest) -> None:
    """`crucible run` waits on this count after stopping its app: a container told to stop
    still runs (and is billed) until its agent reports it stopped."""
    alice = server.tenant("alice")
    host_id = server.register_host(server.tenant("alice", Scope.HOST).token)
    app_id = server.new_app(alice.token)
    fn = server.new_function(alice.token, app_id, server.put_blob(alice.token))
    assert server.ok("GET", f"/v1/apps/{app_id}", token=alice.token)["containers"] == 0
    cid, _ = server.place_container(fn, host_id)
    assert server.ok("GET", f"/v1/apps/{app_id}", token=alice.token)["containers"] == 1
    assert server.ok("POST", f"/v1/apps/{app_id}/stop", token=alice.token)["containers"] == 1
    [listed] = server.ok("GET", "/v1/apps", token=alice.token)
    assert listed["containers"] == 1
    with server.state.engine.begin() as conn:
        conn.execute(update(containers).where(containers.c.id == cid).values(state="stopped"))
    assert server.ok("GET", f"/v1/apps/{app_id}", token=alice.token)["containers"] == 0
    assert server.ok("GET", "/v1/apps", token=alice.token)[0]["containers"] == 0


def test_an_account_has_a_bounded_number_of_running_apps(
    server: ServerUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apps_svc, "MAX_RUNNING_APPS", 3)
    alice = server.tenant("alice")
    made = [server.new_app(alice.token, f"a{i}") for i in range(3)]
    r = server.request("POST", "/v1/apps", token=alice.token, json={"name": "one-more"})
    assert r.status_code == 413 and error_code(r) == "quota_exceeded", r.text
    assert "crucible apps stop" in r.json()["error"]["message"]
    assert server.new_app(server.tenant("bob").token)  # another account's are its own
    server.ok("POST", f"/v1/apps/{made[0]}/stop", token=alice.token)
    assert server.new_app(alice.token, "room-again")  # a stopped one frees its place


def test_a_run_time_longer_than_the_time_since_the_hand_over_is_not_believed(
    server: ServerUnderTest,
) -> None:
    """A host reported exec_us = 10**12 for calls handed over a moment before: the renter
    read a run time of 1,000,000 s and $525 a call, though the ledger charged a fraction of a
    cent (hostile2 probe)."""
    alice = server.tenant("alice")
    host = server.tenant("hoster", Scope.HOST)
    fn = server.new_function(
        alice.token,
        server.new_app(alice.token),
        server.put_blob(alice.token),
        retries={"max_retries": 1, "initial_delay_s": 0},
    )
    cid, ctok = server.place_container(fn, server.register_host(host.token))
    with server.state.engine.begin() as conn:  # a container that costs something
        conn.execute(
            update(containers).where(containers.c.id == cid).values(rate_micros_per_hour=1_890_000)
        )
    ok_call, bad_call = server.new_calls(alice.token, fn, 2)
    exchange = f"/v1/containers/{cid}/exchange"
    server.ok("POST", exchange, token=ctok, json={"want": 8})
    huge = 10**12
    outputs = [
        {
            "call_id": ok_call,
            "attempt": 1,
            "status": "succeeded",
            "result": {"data": b64(b"x"), "size": 1},
            "exec_us": huge,
        },
        {
            "call_id": bad_call,
            "attempt": 1,
            "status": "failed",
            "error": {"code": "remote_error", "message": "no"},
            "exec_us": huge,
        },
    ]
    server.ok("POST", exchange, token=ctok, json={"outputs": outputs, "want": 0})
    for call_id in (ok_call, bad_call):
        info = server.ok("GET", f"/v1/calls/{call_id}", token=alice.token)
        assert info["exec_ms"] < 60_000, info  # the seconds since the hand-over, at most
        assert info["cost_micros"] < 100, info  # not $525
