"""Tenant isolation: another account's objects do not exist for you (404, never 403 or 200)."""

from __future__ import annotations

import httpx

from crucible.protocol.accounts import Scope

from server_testlib import ServerUnderTest, error_code


def assert_not_found(r: httpx.Response) -> None:
    assert r.status_code == 404, (r.request.method, r.request.url, r.status_code, r.text)
    if r.request.method != "HEAD":
        assert error_code(r) == "not_found"


def test_other_accounts_objects_are_not_found(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    bob = server.tenant("bob")
    secret = b"alice's private weights"
    a_blob = server.put_blob(alice.token, secret)
    a_bundle = server.put_blob(alice.token)
    a_app = server.new_app(alice.token, "private")
    a_fn = server.new_function(alice.token, a_app, a_bundle)
    a_calls = server.new_calls(alice.token, a_fn, 2, group_id="shared-name")
    b_bundle = server.put_blob(bob.token, b"bob's bundle")
    b_app = server.new_app(bob.token, "mine")

    # Apps.
    assert_not_found(server.request("GET", f"/v1/apps/{a_app}", token=bob.token))
    assert_not_found(server.request("POST", f"/v1/apps/{a_app}/stop", token=bob.token))
    assert_not_found(server.request("POST", f"/v1/apps/{a_app}/heartbeat", token=bob.token))
    spec = {"name": "g", "code": {"bundle": b_bundle, "module": "m", "qualname": "g"}}
    assert_not_found(
        server.request(
            "POST", f"/v1/apps/{a_app}/functions", token=bob.token, json={"functions": [spec]}
        )
    )
    assert [a["id"] for a in server.ok("GET", "/v1/apps", token=bob.token)] == [b_app]

    # Functions: no calls can be made on another account's function.
    assert_not_found(
        server.request(
            "POST",
            f"/v1/functions/{a_fn}/calls",
            token=bob.token,
            json={"inputs": [{"args": {"data": "gAQ="}}]},
        )
    )

    # Calls.
    for call_id in a_calls:
        assert_not_found(server.request("GET", f"/v1/calls/{call_id}", token=bob.token))
        assert_not_found(
            server.request("GET", f"/v1/calls/{call_id}", token=bob.token, params={"wait_s": 0.2})
        )
        assert_not_found(server.request("POST", f"/v1/calls/{call_id}/cancel", token=bob.token))
    assert server.ok("GET", "/v1/calls", token=bob.token)["calls"] == []
    for params in ({"app_id": a_app}, {"function_id": a_fn}, {"state": "queued"}):
        assert server.ok("GET", "/v1/calls", token=bob.token, params=params)["calls"] == []

    # Groups: alice's finished calls are never delivered to bob, nor consumed by his reads.
    server.ok("POST", f"/v1/calls/{a_calls[0]}/cancel", token=alice.token)
    for body in ({}, {"indices": [0, 1]}, {"wait_s": 0.2}):
        got = server.ok("POST", "/v1/groups/shared-name/results", token=bob.token, json=body)
        assert got == {"results": [], "outstanding": 0}, body
    got = server.ok("POST", "/v1/groups/shared-name/results", token=alice.token, json={})
    assert [c["id"] for c in got["results"]] == [a_calls[0]] and got["outstanding"] == 1

    # Blobs: knowing the hash of bytes stored for alice does not grant them.
    assert server.state.blobs.exists(a_blob)
    assert_not_found(server.request("GET", f"/v1/blobs/{a_blob}", token=bob.token))
    assert_not_found(server.request("HEAD", f"/v1/blobs/{a_blob}", token=bob.token))
    spec = {"name": "g", "code": {"bundle": a_bundle, "module": "m", "qualname": "g"}}
    assert_not_found(
        server.request(
            "POST", f"/v1/apps/{b_app}/functions", token=bob.token, json={"functions": [spec]}
        )
    )
    b_fn = server.new_function(bob.token, b_app, b_bundle)
    assert_not_found(
        server.request(
            "POST",
            f"/v1/functions/{b_fn}/calls",
            token=bob.token,
            json={"inputs": [{"args": {"ref": a_blob, "size": len(secret)}}]},
        )
    )

    # Tokens: bob can neither see nor revoke alice's.
    assert alice.token_id not in {t["id"] for t in server.ok("GET", "/v1/tokens", token=bob.token)}
    assert_not_found(server.request("DELETE", f"/v1/tokens/{alice.token_id}", token=bob.token))
    assert server.ok("GET", "/v1/accounts/me", token=alice.token)["id"] == alice.account_id

    # Bills.
    bill = server.ok("GET", "/v1/bill", token=bob.token)
    assert bill["account_id"] == bob.account_id
    assert all(line["app_id"] != a_app for line in bill["lines"])

    # Nothing bob did changed alice's objects.
    assert server.ok("GET", f"/v1/apps/{a_app}", token=alice.token)["state"] == "running"
    assert server.ok("GET", f"/v1/calls/{a_calls[1]}", token=alice.token)["state"] == "queued"
    assert server.request("GET", f"/v1/blobs/{a_blob}", token=alice.token).content == secret


def test_uploading_the_same_bytes_grants_them(server: ServerUnderTest) -> None:
    """Content addressing is per account: whoever uploads the bytes may read them back."""
    alice, bob = server.tenant("alice"), server.tenant("bob")
    data = b"a popular base model"
    sha = server.put_blob(alice.token, data)
    assert_not_found(server.request("GET", f"/v1/blobs/{sha}", token=bob.token))
    assert server.put_blob(bob.token, data) == sha
    assert server.request("GET", f"/v1/blobs/{sha}", token=bob.token).content == data


def test_hosts_and_containers_of_other_accounts_are_not_found(server: ServerUnderTest) -> None:
    alice, bob = server.tenant("alice"), server.tenant("bob")
    a_host = server.tenant("alice", Scope.HOST)
    b_host = server.tenant("bob", Scope.HOST)
    a_host_id = server.register_host(a_host.token, "shared-name")
    b_host_id = server.register_host(b_host.token, "shared-name")
    assert a_host_id != b_host_id

    assert_not_found(
        server.request("POST", f"/v1/hosts/{a_host_id}/sync", token=b_host.token, json={})
    )
    # Every account sees the fleet (renters choose among hosts), so listing is not a leak.
    listed = {h["id"] for h in server.ok("GET", "/v1/hosts", token=bob.token)}
    assert {a_host_id, b_host_id} <= listed

    # A container of alice's reads alice's blobs only.
    a_bundle = server.put_blob(alice.token)
    b_only = server.put_blob(bob.token, b"bob only")
    a_fn = server.new_function(alice.token, server.new_app(alice.token), a_bundle)
    cid, ctok = server.place_container(a_fn, a_host_id)
    assert server.request("GET", f"/v1/blobs/{a_bundle}", token=ctok).status_code == 200
    assert_not_found(server.request("GET", f"/v1/blobs/{b_only}", token=ctok))
    # Its output may not reference a blob of another account either.
    [call_id] = server.new_calls(alice.token, a_fn)
    [given] = server.ok("POST", f"/v1/containers/{cid}/exchange", token=ctok, json={})["inputs"]
    out = {
        "call_id": call_id,
        "attempt": given["attempt"],
        "status": "succeeded",
        "result": {"ref": b_only, "size": 8},
    }
    r = server.request(
        "POST", f"/v1/containers/{cid}/exchange", token=ctok, json={"outputs": [out], "want": 0}
    )
    assert_not_found(r)
    assert server.ok("GET", f"/v1/calls/{call_id}", token=alice.token)["state"] == "running"
    # And bob's host cannot hand itself alice's containers by syncing with their reports.
    sync = server.ok(
        "POST",
        f"/v1/hosts/{b_host_id}/sync",
        token=b_host.token,
        json={"containers": [{"container_id": cid, "state": "exited", "exit_code": 0}]},
    )
    assert sync["start"] == []
    assert server.ok("GET", f"/v1/calls/{call_id}", token=alice.token)["state"] == "running"
