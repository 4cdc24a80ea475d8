"""No existence oracle: for every route that takes an object's id or name, another
account's object gets exactly the answer (status and body, the name aside) that an object
nobody has gets. Bob probes Alice's objects with his own tokens (user, and host for the
host routes)."""

from __future__ import annotations

import json
from typing import Any

from crucible.protocol.accounts import Scope

from server_testlib import ServerUnderTest

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl a@b"
ASGI = {"kind": "asgi_app", "method": "*", "public": False}


def _alices_world(server: ServerUnderTest, token: str, host_token: str) -> dict[str, str]:
    """One of each object, named so that a name never occurs inside other words."""
    app = server.new_app(token)
    fn = server.new_function(token, app, server.put_blob(token))
    [call] = server.new_calls(token, fn)
    host = server.register_host(host_token)
    server.ok("POST", "/v1/secrets", token=token, json={"name": "zsecz", "values": {"K": "v"}})
    for kind in ("dicts", "queues", "volumes"):
        server.ok("POST", f"/v1/{kind}", token=token, json={"name": f"z{kind}z"})
    server.ok("POST", "/v1/pods", token=token, json={"name": "zpodz"})
    dep = server.ok("POST", "/v1/deployments", token=token, json={"name": "zdepz"})
    serve = {
        "name": "serve",
        "code": {"bundle": server.put_blob(token), "module": "m", "qualname": "serve"},
        "web": ASGI,
    }
    server.ok(
        "POST", f"/v1/apps/{dep['app_id']}/functions", token=token, json={"functions": [serve]}
    )
    server.ok("POST", "/v1/deployments/zdepz/activate", token=token, json={"app_id": dep["app_id"]})
    server.ok("POST", "/v1/models", token=token, json={"name": "zmodelz", "deployment": "zdepz"})
    ft = server.ok(
        "POST",
        "/v1/fine-tunes",
        token=token,
        json={"model": "zmodelz", "adapter": "ad", "call_id": call, "data": "x"},
    )
    key = server.ok("POST", "/v1/ssh-keys", token=token, json={"public_key": KEY})
    tok = server.ok("GET", "/v1/tokens", token=token)[0]
    return {
        "app": app,
        "fn": fn,
        "call": call,
        "host": host,
        "ft": ft["id"],
        "key": key["id"],
        "token": tok["id"],
    }


def _answer(
    server: ServerUnderTest, method: str, template: str, value: str, token: str, body: Any
) -> tuple[int, Any]:
    """The status and body (with ``value`` written <X>) of one request."""
    if template.startswith("/openai/v1/chat"):
        body = {**body, "model": value}
    r = server.request(method, template.replace("{X}", value), token=token, json=body)
    return r.status_code, json.loads(r.text.replace(value, "<X>"))


def test_another_accounts_objects_answer_as_missing_ones(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    w = _alices_world(server, alice.token, server.tenant("alice", Scope.HOST).token)
    bob = server.tenant("bob").token
    bob_host = server.tenant("bob", Scope.HOST).token
    fake = "01kzzzzzzzzzzzzzzzzzzzzzz0"
    inputs = {"inputs": [{"args": {"data": "gAQ="}}]}
    # (method, path with {X}, Alice's, one nobody has, Bob's token, body)
    cases: list[tuple[str, str, str, str, str, Any]] = [
        ("GET", "/v1/apps/{X}", w["app"], f"ap-{fake}", bob, None),
        ("POST", "/v1/apps/{X}/stop", w["app"], f"ap-{fake}", bob, None),
        ("POST", "/v1/apps/{X}/heartbeat", w["app"], f"ap-{fake}", bob, None),
        ("GET", "/v1/apps/{X}/logs", w["app"], f"ap-{fake}", bob, None),
        ("POST", "/v1/apps/{X}/secrets", w["app"], f"ap-{fake}", bob, {"values": {"a": "b"}}),
        ("POST", "/v1/functions/{X}/calls", w["fn"], f"fn-{fake}", bob, inputs),
        ("GET", "/v1/calls/{X}", w["call"], f"ca-{fake}", bob, None),
        ("GET", "/v1/calls/{X}/timeline", w["call"], f"ca-{fake}", bob, None),
        ("GET", "/v1/calls/{X}/items", w["call"], f"ca-{fake}", bob, None),
        ("POST", "/v1/calls/{X}/cancel", w["call"], f"ca-{fake}", bob, None),
        ("GET", "/v1/jobs/{X}", w["call"], f"ca-{fake}", bob, None),
        ("POST", "/v1/jobs/{X}/cancel", w["call"], f"ca-{fake}", bob, None),
        ("GET", "/v1/secrets/{X}", "zsecz", "znonez", bob, None),
        ("DELETE", "/v1/secrets/{X}", "zsecz", "znonez", bob, None),
        ("GET", "/v1/volumes/{X}", "zvolumesz", "znonez", bob, None),
        ("GET", "/v1/volumes/{X}/manifest", "zvolumesz", "znonez", bob, None),
        ("GET", "/v1/volumes/{X}/history", "zvolumesz", "znonez", bob, None),
        ("DELETE", "/v1/volumes/{X}", "zvolumesz", "znonez", bob, None),
        ("GET", "/v1/dicts/{X}", "zdictsz", "znonez", bob, None),
        ("GET", "/v1/queues/{X}", "zqueuesz", "znonez", bob, None),
        ("GET", "/v1/pods/{X}", "zpodz", "znonez", bob, None),
        ("GET", "/v1/pods/{X}/logs", "zpodz", "znonez", bob, None),
        ("POST", "/v1/pods/{X}/stop", "zpodz", "znonez", bob, None),
        ("POST", "/v1/pods/{X}/start", "zpodz", "znonez", bob, None),
        ("DELETE", "/v1/pods/{X}", "zpodz", "znonez", bob, None),
        ("GET", "/v1/deployments/{X}", "zdepz", "znonez", bob, None),
        ("POST", "/v1/deployments/{X}/stop", "zdepz", "znonez", bob, None),
        ("GET", "/v1/deployments/{X}/functions/serve", "zdepz", "znonez", bob, None),
        ("POST", "/v1/jobs/{X}/serve/run", "zdepz", "znonez", bob, {"input": {}}),
        ("GET", "/v1/models/{X}", "zmodelz", "znonez", bob, None),
        ("GET", "/v1/models/{X}/usage", "zmodelz", "znonez", bob, None),
        ("POST", "/v1/models/{X}/stop", "zmodelz", "znonez", bob, None),
        ("POST", "/v1/models/{X}/adapters", "zmodelz", "znonez", bob, {"name": "a", "path": "/p"}),
        ("GET", "/openai/v1/models/alice/{X}", "zmodelz", "znonez", bob, None),
        ("GET", "/openai/v1/models/alice/{X}:ad", "zmodelz", "znonez", bob, None),
        ("GET", "/v1/fine-tunes/{X}", w["ft"], f"ft-{fake}", bob, None),
        ("POST", "/v1/fine-tunes/{X}/cancel", w["ft"], f"ft-{fake}", bob, None),
        ("DELETE", "/v1/ssh-keys/{X}", w["key"], f"sk-{fake}", bob, None),
        ("DELETE", "/v1/tokens/{X}", w["token"], f"tk-{fake}", bob, None),
        ("POST", "/v1/hosts/{X}/sync", w["host"], f"ho-{fake}", bob_host, {}),
        ("POST", "/v1/hosts/{X}/pod-disks", w["host"], f"ho-{fake}", bob_host, {"pod_ids": []}),
        ("PATCH", "/v1/hosts/{X}/profile", w["host"], f"ho-{fake}", bob, {"draining": True}),
    ]
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    for model in ("alice/zmodelz", "alice/zmodelz:ad"):
        cases.append(("POST", "/openai/v1/chat/completions", model, "alice/znonez", bob, chat))
    failures = []
    for method, template, alices, missing, token, body in cases:
        got = _answer(server, method, template, alices, token, body)
        expected = _answer(server, method, template, missing, token, body)
        if got != expected or got[0] != 404:
            failures.append(f"{method} {template}: {got} for Alice's, {expected} for none")
    assert not failures, "\n".join(failures)
    # Alice's objects are untouched by all this.
    assert server.ok("GET", f"/v1/apps/{w['app']}", token=alice.token)["state"] != "stopped"
    assert server.ok("GET", "/v1/pods/zpodz", token=alice.token)["state"] != "deleted"
    assert server.ok("GET", "/v1/secrets/zsecz", token=alice.token)["name"] == "zsecz"
