"""A generator call's back-pressure belongs to its caller: another account reading (or
pretending to read) its items tells its worker nothing, and ids nobody owns are not
remembered by the server."""

from __future__ import annotations

from crucible.protocol.accounts import Scope

from server_testlib import ServerUnderTest, error_code

INLINE = {"data": "aXRlbQ=="}


def test_another_accounts_read_does_not_release_a_workers_back_pressure(
    server: ServerUnderTest,
) -> None:
    alice = server.tenant("alice")
    bob = server.tenant("bob")
    app_id = server.new_app(alice.token)
    fn = server.new_function(alice.token, app_id, server.put_blob(alice.token))
    [call_id] = server.new_calls(alice.token, fn)
    host = server.register_host(server.tenant("alice", Scope.HOST).token)
    container, ctr_token = server.place_container(fn, host)
    got = server.ok(
        "POST", f"/v1/containers/{container}/exchange", token=ctr_token, json={"want": 1}
    )
    [taken] = got["inputs"]
    assert taken["call_id"] == call_id

    # Bob claims to have read a million of Alice's items: he gets the same 404 as for a call
    # that does not exist...
    r = server.request(
        "GET", f"/v1/calls/{call_id}/items", token=bob.token, params={"after": 1_000_000}
    )
    assert r.status_code == 404 and error_code(r) == "not_found"
    # ...and Alice's worker is still held to what Alice herself has read (nothing yet).
    sent = {"call_id": call_id, "attempt": taken["attempt"], "start": 0, "items": [INLINE]}
    ack = server.ok("POST", f"/v1/containers/{container}/items", token=ctr_token, json=sent)
    assert ack["consumed"] == 0


def test_unknown_call_ids_leave_nothing_behind(server: ServerUnderTest) -> None:
    bob = server.tenant("bob")
    for i in range(50):
        r = server.request(
            "GET",
            f"/v1/calls/ca-made-up-{i}{'x' * 500}/items",
            token=bob.token,
            params={"after": 1},
        )
        assert r.status_code == 404 and error_code(r) == "not_found"
    assert server.state.calls.items_consumed == {}


def test_the_owner_still_moves_its_own_worker_on(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    app_id = server.new_app(alice.token)
    fn = server.new_function(alice.token, app_id, server.put_blob(alice.token))
    [call_id] = server.new_calls(alice.token, fn)
    page = server.ok("GET", f"/v1/calls/{call_id}/items", token=alice.token, params={"after": 3})
    assert page["items"] == [] and not page["done"]
    assert server.state.calls.items_consumed[call_id] == 3
