"""Counts one account could grow without bound are bounded: live API tokens, adapters of a
model, console sessions of a token, dicts and queues. Each limit is a module constant, lowered
here so the test reaches it quickly; past it the answer names the limit and what to do."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from crucible.server.services import accounts as accounts_svc
from crucible.server.services import models as models_svc
from crucible.server.services import named_objects
from crucible.server.services import pods as pods_svc
from crucible.server.services import secrets as secrets_svc
from crucible.server.services import sessions as sessions_svc
from crucible.server.store.tables import console_sessions

from console_testlib import ConsoleClient
from server_testlib import ServerUnderTest, error_code


def test_a_user_token_mints_a_bounded_number_of_tokens(
    server: ServerUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accounts_svc, "MAX_TOKENS_PER_ACCOUNT", 4)
    alice = server.tenant("alice")  # the account's first token
    made = [
        server.ok("POST", "/v1/tokens", token=alice.token, json={"name": f"t{i}"}) for i in range(3)
    ]
    r = server.request("POST", "/v1/tokens", token=alice.token, json={"name": "one-more"})
    assert r.status_code == 400 and error_code(r) == "invalid_request"
    assert "4 live tokens" in r.json()["error"]["message"]
    assert "crucible token revoke" in r.json()["error"]["message"]
    # Revoked tokens do not count: revoking one makes room.
    server.ok("DELETE", f"/v1/tokens/{made[0]['id']}", token=alice.token)
    server.ok("POST", "/v1/tokens", token=alice.token, json={"name": "one-more"})
    # Another account is not affected by Alice's count.
    bob = server.tenant("bob")
    server.ok("POST", "/v1/tokens", token=bob.token, json={"name": "b"})


def _model(server: ServerUnderTest, token: str) -> None:
    started = server.ok("POST", "/v1/deployments", token=token, json={"name": "chat"})
    spec: dict[str, Any] = {
        "name": "serve",
        "code": {"bundle": server.put_blob(token), "module": "m", "qualname": "serve"},
        "web": {"kind": "asgi_app", "method": "*", "public": False},
    }
    server.ok(
        "POST", f"/v1/apps/{started['app_id']}/functions", token=token, json={"functions": [spec]}
    )
    server.ok(
        "POST", "/v1/deployments/chat/activate", token=token, json={"app_id": started["app_id"]}
    )
    server.ok("POST", "/v1/models", token=token, json={"name": "chat", "deployment": "chat"})


def test_a_model_registers_a_bounded_number_of_adapters(
    server: ServerUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models_svc, "MAX_ADAPTERS_PER_MODEL", 3)
    alice = server.tenant("alice").token
    _model(server, alice)
    for i in range(3):
        body = {"name": f"a{i}", "path": f"/model/adapters/a{i}"}
        server.ok("POST", "/v1/models/chat/adapters", token=alice, json=body)
    body = {"name": "a3", "path": "/model/adapters/a3"}
    r = server.request("POST", "/v1/models/chat/adapters", token=alice, json=body)
    assert r.status_code == 400 and error_code(r) == "invalid_request"
    assert "3 adapters" in r.json()["error"]["message"]
    # Re-pointing an adapter it has is still allowed.
    body = {"name": "a1", "path": "/model/adapters/a1-v2"}
    info = server.ok("POST", "/v1/models/chat/adapters", token=alice, json=body)
    assert [a["path"] for a in info["adapters"]][1] == "/model/adapters/a1-v2"
    listed = server.ok("GET", "/openai/v1/models", token=alice)["data"]
    assert sorted(m["id"] for m in listed) == ["chat", "chat:a0", "chat:a1", "chat:a2"]


def test_signing_in_again_and_again_keeps_a_bounded_number_of_sessions(
    server: ServerUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sessions_svc, "MAX_SESSIONS_PER_TOKEN", 3)
    alice = server.tenant("alice")
    browsers = [ConsoleClient(server) for _ in range(5)]
    try:
        for b in browsers:
            assert b.sign_in(alice.token).status_code == 303
        with server.state.engine.connect() as conn:
            kept = conn.execute(
                select(func.count())
                .select_from(console_sessions)
                .where(console_sessions.c.token_id == alice.token_id)
            ).scalar_one()
        assert kept == 3
        # The newest sessions work; the oldest were ended (back to the sign-in page).
        assert browsers[-1].get("/").status_code == 200
        first = browsers[0].get("/")
        assert first.status_code == 303 and "/login" in first.headers["location"]
    finally:
        for b in browsers:
            b.close()


def test_an_account_holds_a_bounded_number_of_dicts_and_queues(
    server: ServerUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(named_objects, "MAX_PER_ACCOUNT", 3)
    alice = server.tenant("alice").token
    for kind in ("dicts", "queues"):
        for i in range(3):
            server.ok("POST", f"/v1/{kind}", token=alice, json={"name": f"n{i}"})
        r = server.request("POST", f"/v1/{kind}", token=alice, json={"name": "n3"})
        assert r.status_code == 413 and error_code(r) == "quota_exceeded"
        assert f"3 {kind}" in r.json()["error"]["message"]
        # The ones it has are still found; deleting one makes room.
        server.ok("POST", f"/v1/{kind}", token=alice, json={"name": "n1"})
        server.ok("DELETE", f"/v1/{kind}/n0", token=alice)
        server.ok("POST", f"/v1/{kind}", token=alice, json={"name": "n3"})
    # Another account is not affected by Alice's count.
    server.ok("POST", "/v1/dicts", token=server.tenant("bob").token, json={"name": "n9"})


def test_an_account_and_an_app_hold_a_bounded_number_of_secrets(
    server: ServerUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(secrets_svc, "MAX_SECRETS", 2)
    alice = server.tenant("alice").token
    for name in ("s0", "s1"):
        server.ok("POST", "/v1/secrets", token=alice, json={"name": name, "values": {"K": "v"}})
    r = server.request(
        "POST", "/v1/secrets", token=alice, json={"name": "s2", "values": {"K": "v"}}
    )
    assert r.status_code == 413 and error_code(r) == "quota_exceeded"
    assert "2 secrets" in r.json()["error"]["message"] and "hunter2" not in r.text
    # Replacing the values of one it has is not a new secret.
    body = {"name": "s1", "values": {"K": "w"}, "overwrite": True}
    server.ok("POST", "/v1/secrets", token=alice, json=body)
    # An app's Secret.from_dict secrets are counted per app, apart from the named ones.
    app_id = server.new_app(alice)
    for _ in range(2):
        server.ok("POST", f"/v1/apps/{app_id}/secrets", token=alice, json={"values": {"A": "b"}})
    r = server.request(
        "POST", f"/v1/apps/{app_id}/secrets", token=alice, json={"values": {"A": "b"}}
    )
    assert r.status_code == 413 and error_code(r) == "quota_exceeded"
    other = server.new_app(alice, "other")
    server.ok("POST", f"/v1/apps/{other}/secrets", token=alice, json={"values": {"A": "b"}})


def test_an_account_holds_a_bounded_number_of_pods(
    server: ServerUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pods_svc, "MAX_PODS", 3)
    alice = server.tenant("alice")
    server.ok("POST", "/v1/pods", token=alice.token, json={"name": "a"})
    server.ok("POST", "/v1/pods", token=alice.token, json={"name": "b"})
    # A cluster's members count one each: two more would be four.
    r = server.request(
        "POST", "/v1/clusters", token=alice.token, json={"name": "ring", "nodes": 2, "gpu": "H100"}
    )
    assert r.status_code == 413 and error_code(r) == "quota_exceeded", r.text
    assert "at most 3" in r.json()["error"]["message"]
    assert server.ok("GET", "/v1/clusters", token=alice.token) == []
    server.ok("POST", "/v1/pods", token=alice.token, json={"name": "c"})
    r = server.request("POST", "/v1/pods", token=alice.token, json={"name": "d"})
    assert r.status_code == 413 and error_code(r) == "quota_exceeded", r.text
    assert "crucible pod rm" in r.json()["error"]["message"]
    # A stopped pod still counts; a removed one makes room.
    server.ok("POST", "/v1/pods/a/stop", token=alice.token)
    r = server.request("POST", "/v1/pods", token=alice.token, json={"name": "d"})
    assert r.status_code == 413
    server.ok("DELETE", "/v1/pods/a", token=alice.token)
    server.ok("POST", "/v1/pods", token=alice.token, json={"name": "d"})
    # Another account is not affected by Alice's count.
    bob = server.tenant("bob")
    server.ok("POST", "/v1/pods", token=bob.token, json={"name": "a"})


def test_a_full_account_reusing_a_live_pods_name_is_told_of_the_name_first(
    server: ServerUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The name check and the count are one statement on the submit path: the conflict is
    # still reported before the quota, and another account's pod of that name is neither.
    monkeypatch.setattr(pods_svc, "MAX_PODS", 2)
    alice, bob = server.tenant("alice"), server.tenant("bob")
    server.ok("POST", "/v1/pods", token=bob.token, json={"name": "a"})
    server.ok("POST", "/v1/pods", token=alice.token, json={"name": "a"})
    server.ok("POST", "/v1/pods", token=alice.token, json={"name": "b"})
    r = server.request("POST", "/v1/pods", token=alice.token, json={"name": "a"})
    assert r.status_code == 409 and error_code(r) == "conflict", r.text
    r = server.request("POST", "/v1/pods", token=alice.token, json={"name": "c"})
    assert r.status_code == 413 and error_code(r) == "quota_exceeded", r.text
    # A deleted pod's name is free again and its room too.
    server.ok("DELETE", "/v1/pods/a", token=alice.token)
    server.ok("POST", "/v1/pods", token=alice.token, json={"name": "a"})
