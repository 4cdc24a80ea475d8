"""Per-token billing that cannot be abused, through the real OpenAI routes in process (SQLite
and PostgreSQL) and the official ``openai`` client:

- a request no engine should run (a prompt or ``max_tokens`` past the model's context, ``n``,
  stop sequences, logprobs or embedding inputs out of range, a body over the operator's
  limit) is refused with a 400 in OpenAI's shape *before* any engine work: no container
  serves the model here, so a request that reached one would wait, not answer 400;
- where credits are required, a request first holds the most it can cost; a caller who
  cannot pay it gets 429 ``insufficient_quota`` (the client's RateLimitError), concurrent
  requests never spend the same credit twice, the charge is settled at actual usage and the
  hold released with it, and the ledger stays balanced;
- a hold left by a crash lapses by itself.

This test plays the model's worker (its container's exchange), answering with a usage it
chooses."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import openai
import orjson
import pytest
from sqlalchemy import func, select
from starlette.requests import ClientDisconnect

from crucible.core.ledger import renter_account
from crucible.errors import InsufficientCreditError
from crucible.protocol.accounts import Scope
from crucible.protocol.web import encode_response
from crucible.server.billing.entries import account_balance, check_ledger
from crucible.server.billing.holds import HOLD_TTL_MS, held_micros, place_hold
from crucible.server.store.tables import token_holds

from server_testlib import ServerUnderTest

ASGI = {"kind": "asgi_app", "method": "*", "public": True}
PRICE = 1_000_000  # $1 per million tokens, in and out: a token is one micro-dollar
CONTEXT = 64
HI = [{"role": "user", "content": "hi"}]


def _model(server: ServerUnderTest, token: str) -> str:
    """Alice's public model ``chat`` (a 64-token context); its serving function's id."""
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
        "context_length": CONTEXT,
    }
    info = server.ok("POST", "/v1/models", token=token, json=body)
    assert info["context_length"] == CONTEXT
    return str(made[0]["id"])


def _serving(server: ServerUnderTest, bob_credit: int) -> tuple[Any, str, str, str]:
    """Alice's model served by one container; Bob, its caller, granted ``bob_credit``
    micro-dollars; Alice (who pays her containers' time) plenty. Bob, the operator's token,
    the container and its token."""
    alice = server.tenant("alice")
    bob = server.tenant("bob")
    admin = server.tenant("op", Scope.ADMIN).token
    fn = _model(server, alice.token)
    host = server.register_host(server.tenant("alice", Scope.HOST).token)
    container, ctr_token = server.place_container(fn, host)
    for account, amount in (("bob", bob_credit), ("alice", 10**9)):
        grant = {"account": account, "amount_micros": amount, "key": f"g-{account}"}
        server.ok("POST", "/v1/credits/grants", token=admin, json=grant)
    return bob, admin, container, ctr_token


def _client(server: ServerUnderTest, token: str) -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app), base_url="http://t")
    return openai.AsyncOpenAI(
        base_url="http://t/openai/v1",
        api_key=token,
        max_retries=0,
        timeout=20,
        http_client=http,
    )


async def _answer(
    server: ServerUnderTest,
    container: str,
    ctr_token: str,
    usage: tuple[int, int],
    *,
    status: int = 200,
    stream: bool = False,
) -> None:
    """Serve one request as the model's worker, reporting ``usage`` (input, output): a chat
    completion, or its stream of server-sent events, or (``status`` not 200) a refusal."""
    client = server._client
    answer: dict[str, Any] = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "chat",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "hi"},
            }
        ],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        },
    }
    body = orjson.dumps(answer)
    media = "application/json"
    if stream:
        delta = {**answer, "object": "chat.completion.chunk", "usage": None}
        delta["choices"] = [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]
        last = {**answer, "object": "chat.completion.chunk", "choices": []}
        body = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in (delta, last))
        body += b"data: [DONE]\n\n"
        media = "text/event-stream"
    elif status != 200:
        error = {"message": "no", "type": "invalid_request_error", "param": None, "code": None}
        body = orjson.dumps({"error": error})
    headers = {"authorization": f"Bearer {ctr_token}"}
    url = f"/v1/containers/{container}/exchange"
    got = await client.post(url, headers=headers, json={"want": 1, "wait_s": 30})
    [taken] = got.json()["inputs"]
    parts = [
        orjson.dumps({"status": status, "headers": [["content-type", media]]}),
        orjson.dumps({"body": base64.b64encode(body).decode(), "more": False}),
    ]
    output = {
        "call_id": taken["call_id"],
        "attempt": taken["attempt"],
        "status": "succeeded",
        "result": {"data": base64.b64encode(encode_response(parts)).decode()},
    }
    done = await client.post(url, headers=headers, json={"outputs": [output], "want": 0})
    assert done.status_code == 200, done.text


def test_limits_are_refused_before_any_engine_work(make_server: Any) -> None:
    server: ServerUnderTest = make_server(openai_max_request_bytes=16384)
    alice = server.tenant("alice")
    bob = server.tenant("bob")
    _model(server, alice.token)
    ai = _client(server, bob.token)

    async def refused(call: Any) -> openai.BadRequestError:
        with pytest.raises(openai.BadRequestError) as caught:
            await call
        return caught.value

    async def check() -> None:
        chat = ai.chat.completions.create
        err = await refused(chat(model="alice/chat", messages=HI, max_tokens=CONTEXT))  # type: ignore[arg-type]
        assert err.code == "context_length_exceeded" and err.param == "max_tokens"
        assert "64" in err.message and "at most 63" in err.message
        err = await refused(
            ai.completions.create(model="alice/chat", prompt=list(range(CONTEXT)), max_tokens=1)
        )
        assert err.code == "context_length_exceeded" and err.param == "prompt"
        assert f"{CONTEXT} tokens" in err.message
        # A 60-token prompt leaves room for 4 tokens: max_tokens 5 does not fit.
        err = await refused(
            ai.completions.create(model="alice/chat", prompt=list(range(60)), max_tokens=5)
        )
        assert err.code == "context_length_exceeded" and "at most 4" in err.message
        for extra, param in (
            ({"n": 129}, "n"),
            ({"n": 0}, "n"),
            ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
            ({"stop": "x" * 2000}, "stop"),
            ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
            ({"max_tokens": -1}, "max_tokens"),
            ({"max_completion_tokens": 10**6}, "max_completion_tokens"),
        ):
            err = await refused(chat(model="alice/chat", messages=HI, **extra))  # type: ignore[call-overload]
            assert err.param == param, (extra, err.param, err.message)
            assert err.body["type"] == "invalid_request_error"  # type: ignore[index]
        err = await refused(ai.embeddings.create(model="alice/chat", input=["a"] * 2049))
        assert err.param == "input" and "2048" in err.message
        big = [{"role": "user", "content": "x" * 20_000}]
        err = await refused(chat(model="alice/chat", messages=big))  # type: ignore[arg-type]
        assert err.code == "request_too_large" and err.param == "messages"
        assert "16384" in err.message
        await ai.close()

    server._loop.run_until_complete(check())
    with server.state.engine.connect() as conn:
        assert account_balance(conn, renter_account(bob.account_id)) == 0


def test_a_caller_holds_its_most_and_never_goes_below_zero(make_server: Any) -> None:
    server: ServerUnderTest = make_server(require_credits=True)
    bob, admin, container, ctr_token = _serving(server, 100)
    ai = _client(server, bob.token)

    def balance() -> int:
        with server.state.engine.connect() as conn:
            return account_balance(conn, renter_account(bob.account_id))

    async def check() -> None:
        # At most 63 input and 64 - 1 output tokens without max_tokens: 126 > 100.
        with pytest.raises(openai.RateLimitError) as caught:
            await ai.chat.completions.create(model="alice/chat", messages=HI)  # type: ignore[arg-type]
        assert caught.value.code == "insufficient_quota"
        assert "$0.000126" in caught.value.message and "max_tokens" in caught.value.message

        # With max_tokens 20 its most is 63 + 20 = 83: held while it runs, so a second
        # request at once (83 more) is refused, though the balance alone would cover it.
        first = asyncio.create_task(
            ai.chat.completions.create(model="alice/chat", messages=HI, max_tokens=20)  # type: ignore[arg-type]
        )
        for _ in range(2000):
            with server.state.engine.connect() as conn:
                if held_micros(conn, bob.account_id, server.state.clock.now_ms()) == 83:
                    break
            assert not first.done(), first.result()
            await asyncio.sleep(0.01)
        with pytest.raises(openai.RateLimitError) as caught:
            await ai.chat.completions.create(model="alice/chat", messages=HI, max_tokens=20)  # type: ignore[arg-type]
        assert caught.value.code == "insufficient_quota" and "held" in caught.value.message
        # Settled at what it used (10 + 5), and the hold released with the charge.
        await _answer(server, container, ctr_token, (10, 5))
        done = await first
        assert done.usage is not None and done.usage.completion_tokens == 5
        assert balance() == 85
        # The engine claims more than the request allowed: charged at most its bounds.
        second = asyncio.create_task(
            ai.chat.completions.create(model="alice/chat", messages=HI, max_tokens=20)  # type: ignore[arg-type]
        )
        await _answer(server, container, ctr_token, (10**6, 10**6))
        await second
        assert balance() == 85 - 83 == 2
        more = {"account": "bob", "amount_micros": 100, "key": "g3"}
        granted = await server._client.post(
            "/v1/credits/grants", headers={"authorization": f"Bearer {admin}"}, json=more
        )
        assert granted.status_code < 300, granted.text
        start = balance()
        # A refusal by the engine is not charged, and its hold is released.
        third = asyncio.create_task(
            ai.chat.completions.create(model="alice/chat", messages=HI, max_tokens=5)  # type: ignore[arg-type]
        )
        await _answer(server, container, ctr_token, (10, 5), status=400)
        with pytest.raises(openai.BadRequestError):
            await third
        assert balance() == start
        # A stream is settled at its usage chunk, and its hold released with the charge.
        streamed = asyncio.create_task(_stream(ai))
        await _answer(server, container, ctr_token, (7, 3), stream=True)
        assert await streamed == "hi"
        assert balance() == start - 10
        await ai.close()

    server._loop.run_until_complete(check())
    with server.state.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(token_holds)).scalar() == 0
        assert check_ledger(conn) == []
    assert balance() >= 0


async def _stream(ai: openai.AsyncOpenAI) -> str:
    got = await ai.chat.completions.create(
        model="alice/chat",
        messages=HI,  # type: ignore[arg-type]
        max_tokens=5,
        stream=True,
    )
    return "".join([c.choices[0].delta.content or "" async for c in got if c.choices])


def test_an_owner_without_credit_is_not_shown_to_its_models_callers(make_server: Any) -> None:
    """The model's owner has no credit: its caller is refused without the owner's account
    or balance (they were in the owner's own refusal), and holds nothing."""
    server: ServerUnderTest = make_server(require_credits=True)
    alice, bob = server.tenant("alice"), server.tenant("bob")
    admin = server.tenant("op", Scope.ADMIN).token
    _model(server, alice.token)
    grant = {"account": "bob", "amount_micros": 10**6, "key": "g-bob"}
    server.ok("POST", "/v1/credits/grants", token=admin, json=grant)
    body = {"model": "alice/chat", "messages": HI, "max_tokens": 2}
    r = server.request("POST", "/openai/v1/chat/completions", token=bob.token, json=body)
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert err["code"] == "insufficient_quota"
    assert "owner of this endpoint has no credit" in err["message"]
    assert alice.account_id not in err["message"] and "balance" not in err["message"]
    with server.state.engine.connect() as conn:
        assert held_micros(conn, bob.account_id, server.state.clock.now_ms()) == 0
        assert account_balance(conn, renter_account(bob.account_id)) == 10**6


def test_a_hold_past_the_daily_cap_says_how_to_raise_it(make_server: Any) -> None:
    server: ServerUnderTest = make_server(require_credits=True)
    bob = server.tenant("bob")
    admin = server.tenant("op", Scope.ADMIN).token
    grant = {"account": "bob", "amount_micros": 10**6, "key": "g-bob"}
    server.ok("POST", "/v1/credits/grants", token=admin, json=grant)
    server.ok("PUT", "/v1/credits/cap", token=bob.token, json={"account": "bob", "cap_micros": 200})
    now = server.state.clock.now_ms()
    with server.state.engine.begin() as conn, pytest.raises(InsufficientCreditError) as caught:
        place_hold(conn, bob.account_id, "k1", 205, now, "at most 204 input and 1 output tokens")
    message = caught.value.message
    assert "daily spend cap of $0.0002" in message and "`crucible credits cap`" in message


def test_a_crashed_requests_hold_lapses(server: ServerUnderTest) -> None:
    bob = server.tenant("bob")
    admin = server.tenant("op", Scope.ADMIN).token
    server.ok(
        "POST",
        "/v1/credits/grants",
        token=admin,
        json={"account": "bob", "amount_micros": 100, "key": "g"},
    )
    now = 1_000_000
    with server.state.engine.begin() as conn:
        place_hold(conn, bob.account_id, "th-crashed", 80, now, "a test")
    with server.state.engine.begin() as conn, pytest.raises(InsufficientCreditError):
        place_hold(conn, bob.account_id, "th-next", 30, now + 1, "a test")
    later = now + HOLD_TTL_MS
    with server.state.engine.begin() as conn:
        assert held_micros(conn, bob.account_id, later) == 0
        place_hold(conn, bob.account_id, "th-next", 30, later, "a test")
    with server.state.engine.connect() as conn:
        keys = conn.execute(select(token_holds.c.key)).scalars().all()
    assert keys == ["th-next"]  # the lapsed one was cleared by the next hold


def test_a_stream_nobody_reads_is_settled_at_once(make_server: Any) -> None:
    """The client's socket fails before the streamed response begins (its events are never
    read): the hold does not wait an hour to lapse; the usage the engine reports is charged
    and the hold released, as for a client that leaves mid-stream."""
    server: ServerUnderTest = make_server(require_credits=True)
    bob, _, container, ctr_token = _serving(server, 1_000)

    def balance() -> int:
        with server.state.engine.connect() as conn:
            return account_balance(conn, renter_account(bob.account_id))

    def holds() -> int:
        with server.state.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(token_holds)).scalar() or 0)

    body = orjson.dumps({"model": "alice/chat", "messages": HI, "max_tokens": 5, "stream": True})
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/openai/v1/chat/completions",
        "raw_path": b"/openai/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"t"),
            (b"authorization", f"Bearer {bob.token}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
    }
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        if not sent:
            sent.append("request")
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        raise OSError("the client's socket is gone")

    async def check() -> None:
        start = balance()
        request = asyncio.create_task(server.app(scope, receive, send))
        await _answer(server, container, ctr_token, (7, 3), stream=True)
        with pytest.raises((OSError, ClientDisconnect)):  # Starlette says which
            await request
        for _ in range(1000):  # charged in the background from the rest of the answer
            if holds() == 0 and balance() != start:
                break
            await asyncio.sleep(0.01)
        assert holds() == 0
        assert balance() == start - 10

    server._loop.run_until_complete(check())
    with server.state.engine.connect() as conn:
        assert check_ledger(conn) == []
