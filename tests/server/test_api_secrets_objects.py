"""Secrets, dicts and queues through the API, in-process: tenancy, validation, limits, what a
container token may do, and that secret values never come back out."""

from __future__ import annotations

import base64

from sqlalchemy import select

from crucible.protocol.accounts import Scope
from crucible.server.store.tables import secrets

from server_testlib import ManualClock, ServerUnderTest, error_code

PLAINTEXT = "s3cr3t-VALUE-7f1d9c"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_secrets_lifecycle_and_values_never_leave(server: ServerUnderTest) -> None:
    alice, bob = server.tenant("alice"), server.tenant("bob")
    made = server.request(
        "POST",
        "/v1/secrets",
        token=alice.token,
        json={"name": "hf", "values": {"HF_TOKEN": PLAINTEXT, "OTHER": "x"}},
    )
    assert made.status_code == 201 and PLAINTEXT not in made.text
    assert made.json()["keys"] == ["HF_TOKEN", "OTHER"]
    listed = server.request("GET", "/v1/secrets", token=alice.token)
    assert [s["name"] for s in listed.json()] == ["hf"] and PLAINTEXT not in listed.text
    assert server.request("GET", "/v1/secrets", token=bob.token).json() == []
    r = server.request("GET", "/v1/secrets/hf", token=bob.token)
    assert r.status_code == 404 and error_code(r) == "not_found"
    r = server.request("DELETE", "/v1/secrets/hf", token=bob.token)
    assert r.status_code == 404

    # Taken name: 409 unless overwrite; overwrite replaces the values.
    again = {"name": "hf", "values": {"HF_TOKEN": "new"}}
    r = server.request("POST", "/v1/secrets", token=alice.token, json=again)
    assert r.status_code == 409 and error_code(r) == "conflict"
    r = server.request("POST", "/v1/secrets", token=alice.token, json={**again, "overwrite": True})
    assert r.status_code == 200 and r.json()["keys"] == ["HF_TOKEN"]

    # Sealed at rest: the store holds no plaintext.
    server.ok(
        "POST",
        "/v1/secrets",
        token=alice.token,
        json={"name": "db", "values": {"PASSWORD": PLAINTEXT}},
    )
    with server.state.engine.connect() as conn:
        rows = conn.execute(select(secrets)).all()
    assert all(PLAINTEXT.encode() not in bytes(r.ciphertext) for r in rows)
    assert all(PLAINTEXT not in repr(tuple(r)) for r in rows)

    # A function naming a missing secret is refused, naming it; bob cannot use alice's.
    bundle = server.put_blob(bob.token)
    app_id = server.new_app(bob.token)
    body = {
        "name": "f",
        "code": {"bundle": bundle, "module": "m", "qualname": "f"},
        "secrets": ["db"],
    }
    r = server.request(
        "POST", f"/v1/apps/{app_id}/functions", token=bob.token, json={"functions": [body]}
    )
    assert r.status_code == 404 and "secret 'db' not found" in r.json()["error"]["message"]

    # Alice's own function names it: reading the secret says so (`crucible secret delete`
    # warns with it), until the app stops.
    mine = server.new_app(alice.token, "svc")
    server.new_function(alice.token, mine, server.put_blob(alice.token), secrets=["db"])
    assert server.ok("GET", "/v1/secrets/db", token=alice.token)["used_by"] == ["svc/f"]
    assert server.ok("GET", "/v1/secrets/hf", token=alice.token)["used_by"] == []
    server.ok("POST", f"/v1/apps/{mine}/stop", token=alice.token)
    assert server.ok("GET", "/v1/secrets/db", token=alice.token)["used_by"] == []

    server.ok("DELETE", "/v1/secrets/db", token=alice.token)
    assert [s["name"] for s in server.ok("GET", "/v1/secrets", token=alice.token)] == ["hf"]


def test_secret_input_is_checked(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    for body, why in (
        ({"name": "bad name!", "values": {"A": "b"}}, "name"),
        ({"name": "ok", "values": {}}, "values"),
        ({"name": "ok", "values": {"1BAD": "x"}}, "environment variable"),
        ({"name": "ok", "values": {"CRUCIBLE_TOKEN": "x"}}, "reserved"),
        ({"name": "ok", "values": {"A": "x" * 70_000}}, "at most"),
        ({"name": "ok", "values": {"A": 5}}, "values"),
    ):
        r = server.request("POST", "/v1/secrets", token=alice.token, json=body)
        assert r.status_code == 400, (body, r.text)
        assert why in r.json()["error"]["message"], r.text
        assert "x" * 50 not in r.text
    host = server.tenant("alice", Scope.HOST)
    r = server.request(
        "POST", "/v1/secrets", token=host.token, json={"name": "ok", "values": {"A": "b"}}
    )
    assert r.status_code == 403


def test_container_reads_only_its_functions_secrets_while_running(
    server: ServerUnderTest,
) -> None:
    alice = server.tenant("alice")
    host = server.tenant("alice", Scope.HOST)
    server.ok(
        "POST",
        "/v1/secrets",
        token=alice.token,
        json={"name": "hf", "values": {"HF_TOKEN": PLAINTEXT}},
    )
    server.ok(
        "POST", "/v1/secrets", token=alice.token, json={"name": "unused", "values": {"NOPE": "x"}}
    )
    bundle = server.put_blob(alice.token)
    app_id = server.new_app(alice.token)
    with_secret = server.new_function(alice.token, app_id, bundle, secrets=["hf"])
    host_id = server.register_host(host.token)
    cid, ctok = server.place_container(with_secret, host_id)
    got = server.ok("GET", f"/v1/containers/{cid}/secrets", token=ctok)
    assert got == {"env": {"HF_TOKEN": PLAINTEXT}}
    # Builders do not read values back; another container does not exist for this token.
    r = server.request("GET", f"/v1/containers/{cid}/secrets", token=alice.token)
    assert r.status_code == 403
    report = {"container_id": cid, "state": "exited", "exit_code": 0, "reason": "exited"}
    server.ok("POST", f"/v1/hosts/{host_id}/sync", token=host.token, json={"containers": [report]})
    r = server.request("GET", f"/v1/containers/{cid}/secrets", token=ctok)
    assert r.status_code == 404  # a stopped container's token opens nothing
    assert "not running" in r.json()["error"]["message"]


def test_app_scoped_secrets_are_hidden_and_go_with_the_app(server: ServerUnderTest) -> None:
    from crucible.server.scheduler.loop import SchedulerLoop

    alice = server.tenant("alice")
    app_id = server.new_app(alice.token)
    made = server.ok(
        "POST", f"/v1/apps/{app_id}/secrets", token=alice.token, json={"values": {"KEY": PLAINTEXT}}
    )
    assert made["name"].startswith(f"app.{app_id}.")
    assert server.ok("GET", "/v1/secrets", token=alice.token) == []
    server.ok("POST", f"/v1/apps/{app_id}/stop", token=alice.token)
    SchedulerLoop(server.state)._housekeeping_now()
    with server.state.engine.connect() as conn:
        assert conn.execute(select(secrets)).all() == []


def test_dicts_put_get_pop_items_and_tenancy(server: ServerUnderTest) -> None:
    alice, bob = server.tenant("alice"), server.tenant("bob")
    r = server.request("GET", "/v1/dicts/cache", token=alice.token)
    assert r.status_code == 404 and "create_if_missing=True" in r.json()["error"]["message"]
    server.ok("POST", "/v1/dicts", token=alice.token, json={"name": "cache"})
    k1, k2 = b64(b"Kone"), b64(b"Ktwo")
    put = {"entries": [{"key": k1, "value": b64(b"1")}, {"key": k2, "value": b64(b"2")}]}
    assert server.ok("POST", "/v1/dicts/cache/put", token=alice.token, json=put)["written"] == 2
    skip = {"entries": [{"key": k1, "value": b64(b"9")}], "skip_if_exists": True}
    assert server.ok("POST", "/v1/dicts/cache/put", token=alice.token, json=skip)["written"] == 0
    got = server.ok(
        "POST", "/v1/dicts/cache/get", token=alice.token, json={"keys": [k2, b64(b"Kmissing"), k1]}
    )
    assert [(e["key"], e["value"]) for e in got["entries"]] == [(k2, b64(b"2")), (k1, b64(b"1"))]
    assert server.ok("GET", "/v1/dicts/cache", token=alice.token)["entries"] == 2
    popped = server.ok("POST", "/v1/dicts/cache/pop", token=alice.token, json={"keys": [k1]})
    assert popped["entries"][0]["value"] == b64(b"1")
    items = server.ok("GET", "/v1/dicts/cache/items?limit=1", token=alice.token)
    assert len(items["entries"]) == 1 and items["next_after"] is None
    # bob has no dict of that name (and making his own does not touch alice's).
    assert server.request("GET", "/v1/dicts/cache", token=bob.token).status_code == 404
    server.ok("POST", "/v1/dicts", token=bob.token, json={"name": "cache"})
    assert server.ok("GET", "/v1/dicts/cache", token=bob.token)["entries"] == 0
    assert server.ok("GET", "/v1/dicts/cache", token=alice.token)["entries"] == 1
    r = server.request(
        "POST",
        "/v1/dicts/cache/put",
        token=alice.token,
        json={"entries": [{"key": "!!", "value": ""}]},
    )
    assert r.status_code == 400
    server.ok("DELETE", "/v1/dicts/cache", token=alice.token)
    assert server.request("GET", "/v1/dicts/cache", token=alice.token).status_code == 404


def test_dict_and_queue_limits(make_server: object) -> None:
    server = make_server(dict_max_entries=3, queue_max_items=2)  # type: ignore[operator]
    alice = server.tenant("alice")
    server.ok("POST", "/v1/dicts", token=alice.token, json={"name": "d"})
    entries = [{"key": b64(f"K{i}".encode()), "value": ""} for i in range(4)]
    r = server.request("POST", "/v1/dicts/d/put", token=alice.token, json={"entries": entries})
    assert r.status_code == 413 and error_code(r) == "quota_exceeded"
    assert server.ok("GET", "/v1/dicts/d", token=alice.token)["entries"] == 0  # nothing half-put
    server.ok("POST", "/v1/queues", token=alice.token, json={"name": "q"})
    r = server.request("POST", "/v1/queues/q/put", token=alice.token, json={"values": ["", "", ""]})
    assert r.status_code == 413 and "CRUCIBLE_QUEUE_MAX_ITEMS" in r.json()["error"]["message"]


def test_queues_fifo_partitions_and_exactly_once(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    server.ok("POST", "/v1/queues", token=alice.token, json={"name": "jobs"})
    server.ok(
        "POST",
        "/v1/queues/jobs/put",
        token=alice.token,
        json={"values": [b64(b"a"), b64(b"b"), b64(b"c")]},
    )
    server.ok(
        "POST",
        "/v1/queues/jobs/put",
        token=alice.token,
        json={"values": [b64(b"p")], "partition": "gpu"},
    )
    info = server.ok("GET", "/v1/queues/jobs", token=alice.token)
    assert info["items"] == 4 and info["partitions"] == {"": 3, "gpu": 1}
    got = server.ok("POST", "/v1/queues/jobs/get", token=alice.token, json={"n": 2})
    assert got["values"] == [b64(b"a"), b64(b"b")]
    got = server.ok("POST", "/v1/queues/jobs/get", token=alice.token, json={"n": 5})
    assert got["values"] == [b64(b"c")]
    empty = server.ok(
        "POST", "/v1/queues/jobs/get", token=alice.token, json={"n": 1, "timeout_s": 0.2}
    )
    assert empty["values"] == []
    assert server.ok("POST", "/v1/queues/jobs/get", token=alice.token, json={"partition": "gpu"})[
        "values"
    ] == [b64(b"p")]
    server.ok(
        "POST",
        "/v1/queues/jobs/put",
        token=alice.token,
        json={"values": [b64(b"x")], "partition": "gpu"},
    )
    server.ok("POST", "/v1/queues/jobs/clear", token=alice.token, json={"all": True})
    assert server.ok("GET", "/v1/queues/jobs", token=alice.token)["items"] == 0
    r = server.request(
        "POST", "/v1/queues/jobs/get", token=alice.token, json={"partition": "bad partition"}
    )
    assert r.status_code == 400


def test_containers_use_their_accounts_objects_only(server: ServerUnderTest) -> None:
    alice, bob = server.tenant("alice"), server.tenant("bob")
    host = server.tenant("alice", Scope.HOST)
    server.ok("POST", "/v1/queues", token=alice.token, json={"name": "q"})
    server.ok("POST", "/v1/queues", token=bob.token, json={"name": "bobs"})
    fn = server.new_function(alice.token, server.new_app(alice.token), server.put_blob(alice.token))
    host_id = server.register_host(host.token)
    _cid, ctok = server.place_container(fn, host_id)
    server.ok("POST", "/v1/queues/q/put", token=ctok, json={"values": [b64(b"hi")]})
    assert server.ok("POST", "/v1/queues/q/get", token=alice.token, json={})["values"] == [
        b64(b"hi")
    ]
    assert server.request("GET", "/v1/queues/bobs", token=ctok).status_code == 404
    r = server.request("GET", "/v1/queues/q", token=host.token)
    assert r.status_code == 403


def test_listing_dicts_and_queues_is_not_a_use(server: ServerUnderTest) -> None:
    """`crucible dict list` and `queue list` showed every object as last used now, and
    renewed every object's idle expiry: looking at them kept them alive for ever."""
    clock = ManualClock(1_800_000_000_000)
    server.state.clock = clock
    alice = server.tenant("alice")
    for kind in ("dicts", "queues"):
        server.ok("POST", f"/v1/{kind}", token=alice.token, json={"name": "old"})
    made = clock.now
    clock.now += 3_600_000  # an hour idle
    for kind in ("dicts", "queues"):
        [listed] = server.ok("GET", f"/v1/{kind}", token=alice.token)
        assert listed["last_used_ms"] == made, listed
        [again] = server.ok("GET", f"/v1/{kind}", token=alice.token)
        assert again["last_used_ms"] == made  # the listing did not touch it
    # A use is a use: the SDK's from_name and info() renew it.
    for kind in ("dicts", "queues"):
        used = server.ok("POST", f"/v1/{kind}", token=alice.token, json={"name": "old"})
        assert used["last_used_ms"] == clock.now
        [listed] = server.ok("GET", f"/v1/{kind}", token=alice.token)
        assert listed["last_used_ms"] == clock.now
