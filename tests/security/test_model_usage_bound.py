"""A model's owner runs its engine, so the token usage it reports is the owner's word: a
caller of another account's public model is never charged for more output tokens than its
request allowed (``max_tokens`` times ``n``, or the model's context without one), however
many the engine claims. Through the
real OpenAI route, with this test as the model's worker (its container's exchange)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import orjson
from sqlalchemy import select

from crucible.core.ledger import renter_account
from crucible.protocol.accounts import Scope
from crucible.protocol.web import encode_response
from crucible.server.billing.entries import account_balance
from crucible.server.store.tables import models

from server_testlib import ServerUnderTest

ASGI = {"kind": "asgi_app", "method": "*", "public": True}
PRICE = 1_000_000  # $1 per million tokens, in and out: a token is one micro-dollar


def _public_model(server: ServerUnderTest, token: str) -> str:
    """Alice's public model ``chat``; its serving function's id."""
    started = server.ok("POST", "/v1/deployments", token=token, json={"name": "chat"})
    spec: dict[str, Any] = {
        "name": "serve",
        "code": {"bundle": server.put_blob(token), "module": "m", "qualname": "serve"},
        "web": ASGI,
    }
    made = server.ok(
        "POST", f"/v1/apps/{started['app_id']}/functions", token=token, json={"functions": [spec]}
    )
    server.ok(
        "POST", "/v1/deployments/chat/activate", token=token, json={"app_id": started["app_id"]}
    )
    body = {
        "name": "chat",
        "deployment": "chat",
        "public": True,
        "price_input_micros": PRICE,
        "price_output_micros": PRICE,
    }
    server.ok("POST", "/v1/models", token=token, json=body)
    return str(made[0]["id"])


def _ask(
    server: ServerUnderTest, container: str, ctr_token: str, token: str, request: dict[str, Any]
) -> Any:
    """Bob's request to alice/chat, answered by a worker that claims a huge usage."""
    client = server._client  # the app in-process: the request and the worker run at once
    answer = {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1_000_000, "total_tokens": 1},
    }

    async def worker() -> None:
        headers = {"authorization": f"Bearer {ctr_token}"}
        url = f"/v1/containers/{container}/exchange"
        got = await client.post(url, headers=headers, json={"want": 1, "wait_s": 30})
        [taken] = got.json()["inputs"]
        parts = [
            orjson.dumps({"status": 200, "headers": [["content-type", "application/json"]]}),
            orjson.dumps({"body": base64.b64encode(orjson.dumps(answer)).decode(), "more": False}),
        ]
        output = {
            "call_id": taken["call_id"],
            "attempt": taken["attempt"],
            "status": "succeeded",
            "result": {"data": base64.b64encode(encode_response(parts)).decode()},
        }
        done = await client.post(url, headers=headers, json={"outputs": [output], "want": 0})
        assert done.status_code == 200, done.text

    async def both() -> Any:
        serving = asyncio.create_task(worker())
        r = await client.post(
            "/openai/v1/chat/completions",
            headers={"authorization": f"Bearer {token}"},
            json={"model": "alice/chat", **request},
        )
        await serving
        return r

    return server._loop.run_until_complete(both())


def test_a_caller_pays_at_most_the_output_tokens_it_allowed(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    bob = server.tenant("bob")
    fn = _public_model(server, alice.token)
    host = server.register_host(server.tenant("alice", Scope.HOST).token)
    container, ctr_token = server.place_container(fn, host)
    messages = [{"role": "user", "content": "hi"}]

    r = _ask(server, container, ctr_token, bob.token, {"messages": messages, "max_tokens": 5})
    assert r.status_code == 200, r.text
    # 10 input tokens and at most 5 output tokens, at a micro-dollar each.
    with server.state.engine.connect() as conn:
        assert account_balance(conn, renter_account(bob.account_id)) == -15
    usage = server.ok("GET", "/v1/models/chat/usage", token=alice.token)
    assert (usage["input_tokens"], usage["output_tokens"], usage["cost_micros"]) == (10, 5, 15)

    # n sequences of max_completion_tokens each: the bound is their product.
    ask = {"messages": messages, "max_completion_tokens": 4, "n": 3}
    assert _ask(server, container, ctr_token, bob.token, ask).status_code == 200
    with server.state.engine.connect() as conn:
        assert account_balance(conn, renter_account(bob.account_id)) == -15 - (10 + 12)

    # A request without a bound pays at most what the model's context leaves after the
    # prompt (2048 tokens, the default window: at least one is the prompt's).
    assert _ask(server, container, ctr_token, bob.token, {"messages": messages}).status_code == 200
    with server.state.engine.connect() as conn:
        assert account_balance(conn, renter_account(bob.account_id)) == -37 - (10 + 2047)
        charged = conn.execute(select(models.c.charged_micros)).scalar_one()
    assert charged == 37 + 2057
