"""A function calling another of its app (Modal's function composition): what a container
token may do through the call routes. It looks up and calls the functions of its own app,
and reads, waits on and cancels the calls it made; nothing of another app of its account,
nothing of another account, and no call it did not make (the builder's, another
container's). Its calls are the account's like any other: credit applies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from crucible.protocol.accounts import Scope
from crucible.server.store.tables import calls

from server_testlib import MakeServer, ServerUnderTest, error_code

ARGS = {"args": {"data": "gAQ="}}


@dataclass
class World:
    server: ServerUnderTest
    alice: str  # alice's builder token
    app_a: str
    f_a: str  # the function the container runs
    g_a: str  # another function of app A
    app_b: str
    f_b: str  # a function of alice's other app
    f_bob: str  # a function of another account
    ctok: str  # a container of f_a
    other_ctok: str  # another container of f_a
    cid: str
    host: str
    host_id: str


def _function(server: ServerUnderTest, token: str, app_id: str, name: str) -> str:
    bundle = server.put_blob(token)
    body = {"name": name, "code": {"bundle": bundle, "module": "m", "qualname": name}}
    made = server.ok(
        "POST", f"/v1/apps/{app_id}/functions", token=token, json={"functions": [body]}
    )
    return str(made[0]["id"])


def _world(server: ServerUnderTest) -> World:
    alice = server.tenant("alice").token
    bob = server.tenant("bob").token
    host = server.tenant("alice", Scope.HOST).token
    app_a, app_b = server.new_app(alice, "a"), server.new_app(alice, "b")
    f_a, g_a = _function(server, alice, app_a, "f"), _function(server, alice, app_a, "g")
    f_b = _function(server, alice, app_b, "f")
    f_bob = _function(server, bob, server.new_app(bob, "a"), "f")
    host_id = server.register_host(host)
    cid, ctok = server.place_container(f_a, host_id)
    _, other_ctok = server.place_container(f_a, host_id)
    return World(
        server, alice, app_a, f_a, g_a, app_b, f_b, f_bob, ctok, other_ctok, cid, host, host_id
    )


def _call(w: World, token: str, function_id: str, **body: Any) -> Any:
    return w.server.request(
        "POST", f"/v1/functions/{function_id}/calls", token=token, json={"inputs": [ARGS], **body}
    )


def test_a_container_looks_up_and_calls_only_its_own_apps_functions(
    server: ServerUnderTest,
) -> None:
    w = _world(server)
    found = server.ok("GET", f"/v1/apps/{w.app_a}/functions/g", token=w.ctok)
    assert found["id"] == w.g_a and found["app_id"] == w.app_a
    # The builder looks up by name too, in any app of its account.
    assert server.ok("GET", f"/v1/apps/{w.app_b}/functions/f", token=w.alice)["id"] == w.f_b

    made = _call(w, w.ctok, w.g_a)
    assert made.status_code == 201, made.text
    assert _call(w, w.ctok, w.f_a).status_code == 201  # its own function too (recursion)

    # Another app of its account: neither looked up nor called, and nothing is made there.
    r = server.request("GET", f"/v1/apps/{w.app_b}/functions/f", token=w.ctok)
    assert r.status_code == 404 and error_code(r) == "not_found"
    assert "its own app" in r.json()["error"]["message"]
    r = _call(w, w.ctok, w.f_b)
    assert r.status_code == 404 and "its own app" in r.text, r.text
    # Another account's function does not exist for it.
    r = _call(w, w.ctok, w.f_bob)
    assert r.status_code == 404 and error_code(r) == "not_found"
    bob_app = server.ok("GET", f"/v1/calls?function_id={w.f_bob}", token=w.alice)
    assert bob_app["calls"] == []
    with server.state.engine.connect() as conn:
        made_in = set(conn.execute(select(calls.c.function_id)).scalars())
    assert made_in == {w.g_a, w.f_a}
    # A pool of a class of another app is not made either.
    r = server.request(
        "POST", f"/v1/apps/{w.app_b}/functions/f/pools", token=w.ctok, json={"params": {}}
    )
    assert r.status_code == 404


def test_a_container_reads_and_cancels_only_the_calls_it_made(server: ServerUnderTest) -> None:
    w = _world(server)
    [mine] = _call(w, w.ctok, w.g_a).json()["call_ids"]
    [builders] = server.new_calls(w.alice, w.g_a)
    [others] = _call(w, w.other_ctok, w.g_a).json()["call_ids"]

    assert server.ok("GET", f"/v1/calls/{mine}", token=w.ctok)["state"] == "queued"
    assert server.ok("GET", f"/v1/calls/{mine}?wait_s=0.01", token=w.ctok)["id"] == mine
    assert server.ok("GET", f"/v1/calls/{mine}/items", token=w.ctok)["done"] is False
    # The builder sees every call of its account, the container's included.
    assert server.ok("GET", f"/v1/calls/{mine}", token=w.alice)["id"] == mine

    for call_id in (builders, others):
        for method, path in (
            ("GET", f"/v1/calls/{call_id}"),
            ("GET", f"/v1/calls/{call_id}?wait_s=0.01"),
            ("GET", f"/v1/calls/{call_id}/items"),
            ("POST", f"/v1/calls/{call_id}/cancel"),
        ):
            r = server.request(method, path, token=w.ctok)
            assert r.status_code == 404 and error_code(r) == "not_found", (path, r.text)
        assert server.ok("GET", f"/v1/calls/{call_id}", token=w.alice)["state"] == "queued"

    cancelled = server.ok("POST", f"/v1/calls/{mine}/cancel", token=w.ctok)
    assert cancelled["state"] == "cancelled"


def test_a_containers_map_group_holds_only_its_own_calls(server: ServerUnderTest) -> None:
    w = _world(server)
    # The builder's map and the container's share a group id (ids are the client's choice).
    server.new_calls(w.alice, w.g_a, 3, group_id="g1")
    made = _call(w, w.ctok, w.g_a, group_id="g1", start_index=0)
    [mine] = made.json()["call_ids"]
    got = server.ok("POST", "/v1/groups/g1/results", token=w.ctok, json={"wait_s": 0})
    assert got == {"results": [], "outstanding": 1}
    server.ok("POST", f"/v1/calls/{mine}/cancel", token=w.ctok)
    got = server.ok("POST", "/v1/groups/g1/results", token=w.ctok, json={"wait_s": 0})
    assert [r["id"] for r in got["results"]] == [mine] and got["outstanding"] == 0
    # The builder's calls of the group are still its to read, undelivered.
    got = server.ok("POST", "/v1/groups/g1/results", token=w.alice, json={"wait_s": 0})
    assert got["outstanding"] == 3


def test_a_container_makes_the_pools_of_its_own_apps_class(server: ServerUnderTest) -> None:
    w = _world(server)
    spec = {"params": [{"name": "size", "required": True}], "methods": ["predict"]}
    bundle = server.put_blob(w.alice)
    body = {
        "name": "Model",
        "code": {"bundle": bundle, "module": "m", "qualname": "Model"},
        "class_params": {},
        "class_spec": spec,
    }
    server.ok("POST", f"/v1/apps/{w.app_a}/functions", token=w.alice, json={"functions": [body]})
    pools = f"/v1/apps/{w.app_a}/functions/Model/pools"
    large = server.ok("POST", pools, token=w.ctok, json={"params": {"size": "large"}})
    assert large["name"].startswith("Model.p-") and large["app_id"] == w.app_a
    assert large["class_params"] == {"size": "large"}
    again = server.ok("POST", pools, token=w.alice, json={"params": {"size": "large"}})
    assert again["id"] == large["id"]
    assert _call(w, w.ctok, large["id"]).status_code == 201


def test_a_stopped_containers_token_calls_nothing(server: ServerUnderTest) -> None:
    w = _world(server)
    [mine] = _call(w, w.ctok, w.g_a).json()["call_ids"]
    report = {"container_id": w.cid, "state": "exited", "exit_code": 0, "reason": "exited"}
    server.ok("POST", f"/v1/hosts/{w.host_id}/sync", token=w.host, json={"containers": [report]})
    for r in (
        _call(w, w.ctok, w.g_a),
        server.request("GET", f"/v1/calls/{mine}", token=w.ctok),
        server.request("GET", f"/v1/apps/{w.app_a}/functions/g", token=w.ctok),
    ):
        assert r.status_code == 401 and error_code(r) == "unauthorized", r.text


def test_a_containers_calls_need_the_accounts_credit(make_server: MakeServer) -> None:
    w = _world(make_server(require_credits=True))
    r = _call(w, w.ctok, w.g_a)
    assert r.status_code == 402 and error_code(r) == "insufficient_credit", r.text
    # The same refusal as the builder's own call.
    builder = _call(w, w.alice, w.g_a)
    assert builder.status_code == 402 and builder.json() == r.json()
