"""The OpenAI API through a live exchange, driven by the official ``openai`` client (sync,
async, streaming): models with adapters, chat and text completions, embeddings (float and
base64), errors as the client maps them, and per-token billing of another account's calls.

The model is tests/apps/app_openai.py, a stand-in engine that speaks the protocol over a
trivial word-reversing "model" (the real engines are tested on their own), deployed as any
app and registered as a model; everything between the client and that app is the real
exchange: server, agent and worker processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import app_openai
import httpx
import openai
import pytest

from harness import Exchange, wait_for


def _register(client: Any, **extra: Any) -> dict[str, Any]:
    body = {
        "name": "echo",
        "deployment": "echo",
        "function": "serve",
        "weights": "none (a test stand-in)",
        "public": True,
        # $1 per million input tokens, $2 per million output: 1 and 2 micro-dollars a token.
        "price_input_micros": 1_000_000,
        "price_output_micros": 2_000_000,
        **extra,
    }
    return dict(client.post("/v1/models", body))


def test_openai_client_against_a_live_exchange(exchange: Exchange) -> None:
    token = exchange.owner_token("modelco")
    owner = exchange.client(token)
    try:
        app_openai.app.deploy(name="echo", client=owner)
        _register(owner)
        owner.post("/v1/models/echo/adapters", {"name": "sql", "path": "/adapters/sql"})
        owner.post("/v1/models/echo/adapters", {"name": "bad-rank", "path": "/adapters/x"})
        _sync_client(exchange, token)
        asyncio.run(_async_client(exchange, token))
        _billing(exchange, owner)
    finally:
        owner.close()


def _sync_client(exchange: Exchange, token: str) -> None:
    ai = openai.OpenAI(
        base_url=f"{exchange.url}/openai/v1", api_key=token, max_retries=0, timeout=120
    )
    ids = [m.id for m in ai.models.list()]
    assert ids == ["echo", "echo:bad-rank", "echo:sql"]
    assert ai.models.retrieve("echo:sql").id == "echo:sql"

    chat = ai.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "one two three"}]
    )
    assert chat.choices[0].message.content == "three two one"
    assert chat.model == "echo"
    assert chat.usage is not None
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (3, 3)

    # max_tokens reaches the engine.
    short = ai.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "a b c d"}], max_tokens=2
    )
    assert short.choices[0].message.content == "d c"

    # Streaming: the chunks as produced, then the usage chunk because it was asked for.
    chunks = list(
        ai.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "red green blue"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "blue green red"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    # Not asked for: the exchange still meters the stream, but the client sees no usage.
    plain = list(
        ai.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "x y"}], stream=True
        )
    )
    assert all(c.usage is None for c in plain) and plain[-1].choices
    # Every chunk names the model as the caller did (the engine knows the adapter's bare name).
    for model in ("echo", "echo:sql"):
        named = list(
            ai.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "a b"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert len(named) > 2 and {c.model for c in named} == {model}
    streamed_sql = list(ai.completions.create(model="echo:sql", prompt="p q", stream=True))
    assert streamed_sql and {c.model for c in streamed_sql} == {"echo:sql"}

    done = ai.completions.create(model="echo", prompt="alpha beta")
    assert done.choices[0].text == "beta alpha"
    streamed = "".join(
        c.choices[0].text
        for c in ai.completions.create(model="echo", prompt="p q", stream=True)
        if c.choices
    )
    assert streamed == "q p"

    # Embeddings: the client asks for base64 by default and decodes it; floats on request.
    emb = ai.embeddings.create(model="echo", input=["hello world"])
    assert emb.data[0].embedding == [11.0, 2.0, 0.5]
    emb = ai.embeddings.create(model="echo", input="hi", encoding_format="float")
    assert emb.data[0].embedding == [2.0, 1.0, 0.5]

    # An adapter serves at once; one the engine refuses is a 400 that says why.
    sql = ai.chat.completions.create(
        model="echo:sql", messages=[{"role": "user", "content": "select it"}]
    )
    assert sql.choices[0].message.content == "[sql] it select"
    assert sql.model == "echo:sql"
    with pytest.raises(openai.BadRequestError, match="rank 4096"):
        ai.chat.completions.create(
            model="echo:bad-rank", messages=[{"role": "user", "content": "x"}]
        )

    # Errors as the official client maps them.
    with pytest.raises(openai.NotFoundError) as missing:
        ai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        ai.chat.completions.create(model="echo:nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as bad:
        ai.chat.completions.create(model="echo", messages=[])
    assert bad.value.param == "messages"  # refused by the exchange, before the engine
    with pytest.raises(openai.InternalServerError) as broke:  # the engine's 500: a 502
        ai.chat.completions.create(model="echo", messages=[{"role": "user", "content": "boom"}])
    # Where its owner looks: the call, or for a request handed straight to a container
    # (rq-, no call kept) the deployment's logs.
    assert broke.value.status_code == 502
    said = broke.value.message
    assert ("crucible call ca-" in said) if "(call ca-" in said else ("crucible logs" in said)
    refused = httpx.post(
        f"{exchange.url}/openai/v1/completions",
        json={"model": "echo"},
        headers={"authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert refused.status_code == 400, refused.text  # refused before any engine work
    assert refused.json()["error"]["param"] == "prompt"
    assert "'prompt' is required" in refused.json()["error"]["message"]
    wrong = openai.OpenAI(base_url=f"{exchange.url}/openai/v1", api_key="cru_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


async def _async_client(exchange: Exchange, token: str) -> None:
    ai = openai.AsyncOpenAI(
        base_url=f"{exchange.url}/openai/v1", api_key=token, max_retries=0, timeout=120
    )
    answers = await asyncio.gather(
        *(
            ai.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": f"n {i}"}]
            )
            for i in range(4)
        )
    )
    assert sorted(a.choices[0].message.content or "" for a in answers) == [
        f"{i} n" for i in range(4)
    ]
    stream = await ai.chat.completions.create(
        model="echo:sql", messages=[{"role": "user", "content": "u v"}], stream=True
    )
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts) == "[sql] v u"
    await ai.close()


def _billing(exchange: Exchange, owner: Any) -> None:
    """Another account calls the public model as OWNER/NAME and pays per token; the owner
    is credited; both see it in their bill and the owner in the model's usage."""
    buyer_token = exchange.new_account("buyer")
    ai = openai.OpenAI(
        base_url=f"{exchange.url}/openai/v1", api_key=buyer_token, max_retries=0, timeout=120
    )
    owner_name = owner.get("/v1/accounts/me")["name"]
    label = f"{owner_name}/echo"
    assert label in [m.id for m in ai.models.list()]
    with pytest.raises(openai.NotFoundError):  # "echo" alone is the buyer's own namespace
        ai.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
    expected = 0
    for words in ("one two three", "four five", "six"):
        r = ai.chat.completions.create(model=label, messages=[{"role": "user", "content": words}])
        assert r.model == label
        assert r.usage is not None
        expected += r.usage.prompt_tokens * 1 + r.usage.completion_tokens * 2
    chunks = list(
        ai.chat.completions.create(
            model=f"{label}:sql", messages=[{"role": "user", "content": "s t"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "[sql] t s"
    expected += 2 * 1 + 3 * 2  # 2 words in; "[sql] t s" is 3 out (metered though not shown)

    # A client that leaves after the first token is charged for the whole answer all the
    # same (the engine finished it; its usage is read from the rest of the stream).
    body = {"model": label, "messages": [{"role": "user", "content": "a b c d e"}], "stream": True}
    with httpx.stream(
        "POST",
        f"{exchange.url}/openai/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {buyer_token}"},
        timeout=120,
    ) as r:
        assert r.status_code == 200
        assert next(r.iter_lines()).startswith("data: ")
    expected += 5 * 1 + 5 * 2

    # What a caller adds to its request never lowers what it is charged:
    def post(path: str, extra: dict[str, Any]) -> httpx.Response:
        return httpx.post(
            f"{exchange.url}/openai/v1/{path}",
            json={"model": label, **extra},
            headers={"authorization": f"Bearer {buyer_token}"},
            timeout=120,
        )

    # vLLM's continuous_usage_stats is not passed on: each chunk would carry a running
    # usage, and the first (1 output token) was charged.
    user = [{"role": "user", "content": "p q r s"}]
    opts = {"include_usage": True, "continuous_usage_stats": True}
    r = post("chat/completions", {"messages": user, "stream": True, "stream_options": opts})
    assert r.status_code == 200 and '"completion_tokens":4' in r.text, r.text
    expected += 4 * 1 + 4 * 2
    # An engine that reports only running figures is charged the last one.
    user = [{"role": "user", "content": "running x y"}]
    r = post("chat/completions", {"messages": user, "stream": True})
    assert r.status_code == 200 and "running" in r.text, r.text
    expected += 3 * 1 + 3 * 2
    # /completions honours max_tokens only: the larger of the two limits bounds the charge
    # (max_completion_tokens 1 and max_tokens 3 made 3 tokens, charged as 1).
    r = post("completions", {"prompt": "u v w", "max_completion_tokens": 1, "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3, r.text
    expected += 3 * 1 + 3 * 2
    # "stream" means nothing to embeddings: the answer is charged (it was served for free).
    r = post("embeddings", {"input": "e f", "stream": True})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 2, r.text
    expected += 2 * 1
    # An engine's refusal that says what it spent (response_format's attempts) is charged.
    user = [{"role": "user", "content": "never json"}]
    r = post("chat/completions", {"messages": user, "response_format": {"type": "json_object"}})
    assert r.status_code == 422 and r.json()["usage"]["completion_tokens"] == 6, r.text
    expected += 2 * 1 + 6 * 2

    buyer = exchange.client(buyer_token)
    try:
        wait_for(lambda: buyer.get("/v1/bill")["tokens"][0]["requests"] == 10, 30, "the charge")
        tokens = buyer.get("/v1/bill")["tokens"]
        assert tokens == [
            {
                "model": label,
                "requests": 10,
                "input_tokens": 3 + 2 + 1 + 2 + 5 + 4 + 3 + 3 + 2 + 2,
                "output_tokens": 3 + 2 + 1 + 3 + 5 + 4 + 3 + 3 + 6,
                "cost_micros": expected,
                "earned_micros": 0,
            }
        ]
        assert buyer.get("/v1/credits")["balance_micros"] == -expected  # the ledger
    finally:
        buyer.close()
    env = {
        **exchange.process_env(exchange.root / "buyer-cli"),
        "CRUCIBLE_SERVER_URL": exchange.url,
        "CRUCIBLE_TOKEN": buyer_token,
        "COLUMNS": "120",
    }
    shown = subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", "bill"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "Model tokens" in shown.stdout and label in shown.stdout
    assert f"${expected / 1e6:.6f}" in shown.stdout
    earned = owner.get("/v1/bill")["tokens"]
    assert [(t["model"], t["earned_micros"]) for t in earned] == [(label, expected)]
    usage = owner.get("/v1/models/echo/usage")
    assert usage["cost_micros"] == expected
    by_caller = {(u["caller"], u["adapter"]): u for u in usage["lines"]}
    assert by_caller[("buyer", "")]["requests"] == 9
    assert by_caller[("buyer", "sql")]["output_tokens"] == 3
    assert by_caller[(owner_name, "")]["cost_micros"] == 0  # the owner's own calls: no charge

    # Private again: the buyer can no longer see or call it, in the same words as a typo.
    _register(owner, public=False)
    with pytest.raises(openai.NotFoundError) as hidden:
        ai.chat.completions.create(model=label, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError) as typo:
        ai.chat.completions.create(
            model=f"{owner_name}/nope", messages=[{"role": "user", "content": "x"}]
        )
    assert hidden.value.message.replace("echo", "nope") == typo.value.message
