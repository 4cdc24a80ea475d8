"""The OpenAI API's edges, in process on SQLite and PostgreSQL: errors in OpenAI's shape with
the statuses its client maps (never a 500 for a client's mistake), tenancy (another
account's private model is indistinguishable from a missing one), the model registry's
checks, and token usage charged through the ledger with exact running-total rounding.
(Serving requests end to end is tests/e2e/test_openai_e2e.py.)"""

from __future__ import annotations

import gzip
from typing import Any

from crucible.core.ledger import PLATFORM_FEES, renter_account
from crucible.core.token_pricing import TokenUsage
from crucible.protocol.accounts import Scope
from crucible.server.auth import Principal
from crucible.server.billing.entries import account_balance, check_ledger
from crucible.server.services import models as svc

from server_testlib import ServerUnderTest

ASGI = {"kind": "asgi_app", "method": "*", "public": False}


def _deploy(server: ServerUnderTest, token: str, name: str, web: dict[str, Any] | None) -> None:
    started = server.ok("POST", "/v1/deployments", token=token, json={"name": name})
    bundle = server.put_blob(token)
    spec: dict[str, Any] = {
        "name": "serve",
        "code": {"bundle": bundle, "module": "m", "qualname": "serve"},
    }
    if web:
        spec["web"] = web
    server.ok(
        "POST", f"/v1/apps/{started['app_id']}/functions", token=token, json={"functions": [spec]}
    )
    server.ok(
        "POST", f"/v1/deployments/{name}/activate", token=token, json={"app_id": started["app_id"]}
    )


def _openai_error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["message"]
    return dict(err)


def _model(server: ServerUnderTest, token: str, **extra: Any) -> dict[str, Any]:
    body = {"name": "chat", "deployment": "chat", **extra}
    return dict(server.ok("POST", "/v1/models", token=token, json=body))


def test_errors_are_in_openais_shape(server: ServerUnderTest) -> None:
    alice = server.tenant("alice").token
    _deploy(server, alice, "chat", ASGI)
    _model(server, alice)
    chat = "/openai/v1/chat/completions"
    msg = {"messages": [{"role": "user", "content": "hi"}]}

    for method, path in (
        ("GET", "/openai/v1/models"),
        ("GET", "/openai/v1/models/chat"),
        ("POST", chat),
        ("POST", "/openai/v1/completions"),
        ("POST", "/openai/v1/embeddings"),
    ):
        for headers in ({}, {"authorization": "Bearer cru_never-issued"}, {"authorization": "x"}):
            r = server.request(method, path, headers=headers, json={"model": "chat", **msg})
            err = _openai_error(r, 401)
            assert err["type"] == "authentication_error", (path, err)
            assert r.headers.get("www-authenticate") == "Bearer"
    r = server.request("POST", chat, token="cru_unknown", json={"model": "chat", **msg})
    assert _openai_error(r, 401)["code"] == "invalid_api_key"
    host = server.tenant("alice", Scope.HOST).token
    assert _openai_error(server.request("GET", "/openai/v1/models", token=host), 403)

    err = _openai_error(
        server.request("POST", chat, token=alice, json={"model": "nope", **msg}), 404
    )
    assert err["code"] == "model_not_found" and "nope" in err["message"]
    r = server.request("POST", chat, token=alice, json={"model": "chat:nope", **msg})
    assert _openai_error(r, 404)["code"] == "model_not_found"
    for body, words in (
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"messages": []}', "'model' is required"),
        (b'{"model": 7}', "'model' must be a string"),
        (b'{"model": "chat", "stream": "yes"}', "'stream'"),
        (b'{"model": "chat", "stream_options": {"include_usage": true}}', "only allowed"),
        (b'{"model": "chat", "stream": true, "stream_options": "x"}', "must be an object"),
    ):
        r = server.request(
            "POST", chat, token=alice, content=body, headers={"content-type": "application/json"}
        )
        err = _openai_error(r, 400)
        assert err["type"] == "invalid_request_error" and words in err["message"], err
    err = _openai_error(server.request("GET", "/openai/v1/nowhere", token=alice), 404)
    assert err["type"] == "invalid_request_error"
    # The rest of the API keeps Crucible's own shape.
    r = server.request("GET", "/v1/models/nope", token=alice)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_a_tenant_sees_only_its_own_and_public_models(server: ServerUnderTest) -> None:
    alice = server.tenant("alice").token
    bob = server.tenant("bob").token
    _deploy(server, alice, "chat", ASGI)
    _model(server, alice)
    server.ok("POST", "/v1/models/chat/adapters", token=alice, json={"name": "sql", "path": "/a"})
    # A path the adapter header cannot carry (it reached the engine as '??').
    r = server.request(
        "POST",
        "/v1/models/chat/adapters",
        token=alice,
        json={"name": "jp", "path": "/model/adapters/日本"},
    )
    assert r.status_code == 400 and "printable ASCII" in r.text, r.text

    listed = server.ok("GET", "/openai/v1/models", token=alice)
    assert [m["id"] for m in listed["data"]] == ["chat", "chat:sql"]
    assert server.ok("GET", "/openai/v1/models", token=bob)["data"] == []
    assert server.ok("GET", "/v1/models", token=bob) == []
    chat = "/openai/v1/chat/completions"
    answers = set()
    for model in ("alice/chat", "alice/chat:sql", "alice/nothing", "nobody/chat"):
        r = server.request("POST", chat, token=bob, json={"model": model, "messages": []})
        answers.add(_openai_error(r, 404)["message"].replace(model, "<m>"))
    assert len(answers) == 1, answers  # private and missing read the same
    assert server.request("GET", "/v1/models/chat", token=bob).status_code == 404
    r = server.request(
        "POST", "/v1/models/chat/adapters", token=bob, json={"name": "x", "path": "/x"}
    )
    assert r.status_code == 404

    _model(server, alice, public=True)
    listed = server.ok("GET", "/openai/v1/models", token=bob)
    assert [(m["id"], m["owned_by"]) for m in listed["data"]] == [
        ("alice/chat", "alice"),
        ("alice/chat:sql", "alice"),
    ]
    assert server.ok("GET", "/openai/v1/models/alice/chat:sql", token=bob)["id"] == "alice/chat:sql"
    # Stopped, it answers nobody (404 to every request): nobody sees it listed, its owner
    # neither (it was, and a client picking from the list got 404s); its owner's registry
    # (GET /v1/models, `crucible model list`) still shows it, stopped.
    server.ok("POST", "/v1/models/chat/stop", token=alice)
    assert server.ok("GET", "/openai/v1/models", token=bob)["data"] == []
    assert server.ok("GET", "/openai/v1/models", token=alice)["data"] == []
    assert [m["state"] for m in server.ok("GET", "/v1/models", token=alice)] == ["stopped"]


def test_registering_checks_the_deployment(server: ServerUnderTest) -> None:
    alice = server.tenant("alice").token
    bob = server.tenant("bob").token
    _deploy(server, alice, "chat", ASGI)
    _deploy(server, alice, "plain", None)
    _deploy(server, alice, "page", {"kind": "fastapi_endpoint", "method": "GET", "public": False})
    for body, status, words in (
        ({"name": "m", "deployment": "chat"}, 201, ""),
        ({"name": "m", "deployment": "plain"}, 400, "asgi_app"),  # not a web function
        ({"name": "m", "deployment": "page"}, 400, "asgi_app"),
        ({"name": "m", "deployment": "nope"}, 404, "nope"),
        ({"name": "m:x", "deployment": "chat"}, 400, "name"),
        ({"name": "m", "deployment": "chat", "price_input_micros": -1}, 400, "price_input"),
    ):
        r = server.request("POST", "/v1/models", token=alice, json=body)
        assert r.status_code == status, (body, r.text)
        assert words in r.text
    # Another account's deployment is not found, whatever it is.
    r = server.request("POST", "/v1/models", token=bob, json={"name": "m", "deployment": "chat"})
    assert r.status_code == 404
    server.ok("POST", "/v1/models/m/stop", token=alice)
    r = server.request(
        "POST", "/openai/v1/chat/completions", token=alice, json={"model": "m", "messages": []}
    )
    assert "not being served" in _openai_error(r, 404)["message"]


def test_usage_is_charged_exactly_through_the_ledger(server: ServerUnderTest) -> None:
    owner = server.tenant("alice")
    caller = server.tenant("bob")
    _deploy(server, owner.token, "chat", ASGI)
    # $0.10 per million input tokens, $0.25 per million output: fractions of a micro-dollar.
    _model(
        server, owner.token, public=True, price_input_micros=100_000, price_output_micros=250_000
    )
    who = Principal(account_id=caller.account_id, scope="user")
    fee_ppm = 100_000  # 10 %
    engine = server.state.engine
    charged = []
    with engine.begin() as conn:
        resolved = svc.resolve(conn, who, "alice/chat")
    for i in range(40):
        with engine.begin() as conn:
            usage = TokenUsage(7, 3)  # worth 0.7 + 0.75 = 1.45 micro-dollars
            charged.append(
                svc.record_usage(conn, resolved, who, usage, f"r{i}", 1_000 + i, fee_ppm)
            )
    # Rounded on the running total: 40 requests are worth exactly 58 micro-dollars.
    assert sum(charged) == 58 and set(charged) <= {1, 2}
    with engine.connect() as conn:
        assert account_balance(conn, renter_account(caller.account_id)) == -58
        fee = account_balance(conn, PLATFORM_FEES)
        assert fee == 5  # floor(58 * 10 %), however the requests were cut
        assert account_balance(conn, renter_account(owner.account_id)) == 58 - fee
        assert check_ledger(conn) == []
        report = svc.model_usage_report(conn, Principal(owner.account_id, "user"), "chat")
    assert (report.requests, report.input_tokens, report.output_tokens) == (40, 280, 120)
    assert report.cost_micros == 58
    bill = server.ok("GET", "/v1/bill", token=caller.token)["tokens"]
    assert bill[0]["cost_micros"] == 58 and bill[0]["model"] == "alice/chat"
    entries = server.ok("GET", "/v1/statement?kind=entries", token=caller.token)
    tokens = [e for e in entries if str(e["meter"]).startswith("model:")]
    assert sum(e["cost_micros"] for e in tokens) == 58 and len(tokens) == 40
    assert "7 input + 3 output tokens" in tokens[0]["memo"]
    earned = server.ok("GET", "/v1/bill", token=owner.token)["tokens"]
    assert earned[0]["earned_micros"] == 58
    # The owner's statement holds what moved its balance: each request's earning after the
    # fee, without the caller's cost; its entries add up to its balance.
    mine = server.ok("GET", "/v1/statement?kind=entries", token=owner.token)
    earnings = [e for e in mine if e["kind"] == "earning"]
    # (A request whose share rounds to nothing moves nothing, and is not listed.)
    assert 30 < len(earnings) <= 40 and all(e["cost_micros"] is None for e in earnings)
    assert sum(e["amount_micros"] for e in earnings) == 58 - fee
    assert sum(e["amount_micros"] or 0 for e in mine) == 58 - fee
    assert "7 input + 3 output tokens" in earnings[0]["memo"]
    assert caller.account_id not in str(mine)
    # The owner's own requests are recorded, not charged.
    own = Principal(account_id=owner.account_id, scope="user")
    with engine.begin() as conn:
        mine = svc.resolve(conn, own, "chat")
        assert svc.record_usage(conn, mine, own, TokenUsage(1000, 1000), "o1", 3_000, fee_ppm) == 0


def test_a_caller_without_credit_gets_insufficient_quota(make_server: Any) -> None:
    server = make_server(require_credits=True)
    alice = server.tenant("alice").token
    bob = server.tenant("bob").token  # never granted credits
    _deploy(server, alice, "chat", ASGI)
    _model(server, alice, public=True, price_input_micros=1_000_000)
    r = server.request(
        "POST",
        "/openai/v1/chat/completions",
        token=bob,
        json={"model": "alice/chat", "messages": [{"role": "user", "content": "hi"}]},
    )
    err = _openai_error(r, 429)
    assert err["code"] == "insufficient_quota" and "credit" in err["message"]


def test_compressed_and_oversized_bodies_are_named_as_such(make_server: Any) -> None:
    """A gzip body read as "not valid JSON: str is not valid UTF-8"; a body over the API's
    16 MiB named that limit, where a model request's own (smaller) one applies."""
    server = make_server(max_request_bytes=1_000_000, openai_max_request_bytes=200_000)
    alice = server.tenant("alice").token
    chat = "/openai/v1/chat/completions"
    r = server.request(
        "POST",
        chat,
        token=alice,
        content=gzip.compress(b'{"model": "m", "messages": []}'),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    err = _openai_error(r, 400)
    assert "compressed (Content-Encoding: gzip)" in err["message"], err
    big = b'{"model": "m", "prompt": "' + b"x" * 1_100_000 + b'"}'
    r = server.request(
        "POST", chat, token=alice, content=big, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413, r.text
    assert "over 200000 bytes" in r.text and "CRUCIBLE_OPENAI_MAX_REQUEST_BYTES" in r.text
