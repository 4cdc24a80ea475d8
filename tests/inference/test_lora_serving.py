"""Multi-LoRA serving: mixed batches of base and adapter requests give the same tokens as
PEFT gives each request alone (greedy; the engine on the CPU, and on CUDA where there is a
GPU, against CPU goldens), adapters are evicted and reloaded within the memory
budget, and adapters that cannot serve are a 400 naming the problem."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from crucible.inference.config import EngineConfig
from crucible.inference.engine import GenerationRequest, SamplingParams
from crucible.inference.server import create_app
from crucible.inference.transformers_engine import TransformersEngine

from inference_testlib import build_random_lora, build_tiny_llama

pytest.importorskip("peft")

PROMPTS = ["hello there", "a", "the quick brown fox jumps", "LoRA!"]
NEW_TOKENS = 12


def peft_golden(base: Path, adapter: Path | None, prompt_ids: list[int]) -> list[int]:
    """Greedy tokens from Hugging Face generate on the base model, or PEFT over it, alone."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(base))
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([prompt_ids]),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=3,
        )
    return [int(t) for t in out[0, len(prompt_ids) :]]


async def run_mixed(
    engine: TransformersEngine, jobs: list[tuple[list[int], str | None]]
) -> list[list[int]]:
    await engine.start()
    try:

        async def one(ids: list[int], adapter: str | None) -> list[int]:
            params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
            return [
                s.token_id async for s in engine.generate(GenerationRequest(ids, params, adapter))
            ]

        return list(await asyncio.gather(*[one(ids, a) for ids, a in jobs]))
    finally:
        await engine.stop()


def test_mixed_batch_matches_peft_alone(
    tiny_llama: Path, lora_dirs: dict[str, Path], device: str
) -> None:
    engine = TransformersEngine(
        EngineConfig(weights=tiny_llama, max_batch_size=8, adapters=dict(lora_dirs), device=device)
    )
    names: list[str | None] = [None, "alpha", "beta", "gamma"]
    jobs = [(engine.encode(p), names[(i + j) % 4]) for i, p in enumerate(PROMPTS) for j in range(2)]
    got = asyncio.run(run_mixed(engine, jobs))
    assert max(engine.batch_sizes) > 1, "the requests never shared a decode step"
    for (ids, adapter), tokens in zip(jobs, got, strict=True):
        want = peft_golden(tiny_llama, lora_dirs[adapter] if adapter else None, ids)
        assert tokens == want, f"adapter {adapter} on {engine.decode(ids)!r}"
    # the adapters change the output: the test would pass vacuously otherwise
    base_ids = jobs[0][0]
    outs = {a: peft_golden(tiny_llama, lora_dirs[a] if a else None, base_ids) for a in names}
    assert len({tuple(v) for v in outs.values()}) == 4


def test_lru_eviction_keeps_outputs(
    tiny_llama: Path, lora_dirs: dict[str, Path], device: str
) -> None:
    sizes = {}
    probe = TransformersEngine(EngineConfig(weights=tiny_llama, adapters=dict(lora_dirs)))
    for info in probe.adapters():
        sizes[info.name] = info.size_bytes
    # room for the two largest adapters, never all three
    budget = sorted(sizes.values())[-1] + sorted(sizes.values())[-2]
    assert budget < sum(sizes.values())
    engine = TransformersEngine(
        EngineConfig(
            weights=tiny_llama, lora_budget_bytes=budget, adapters=dict(lora_dirs), device=device
        )
    )
    ids = engine.encode("evict me")
    order = ["alpha", "beta", "gamma", "alpha", None, "beta", "gamma"]
    results = [asyncio.run(run_mixed(engine, [(ids, a)]))[0] for a in order]
    assert engine.lora.evictions >= 2
    assert len(engine.lora.loaded_names()) < 3
    for adapter, tokens in zip(order, results, strict=True):
        assert tokens == peft_golden(tiny_llama, lora_dirs[adapter] if adapter else None, ids)
    # all three in one batch when the budget allows it, after the evictions
    mixed = asyncio.run(
        run_mixed(
            TransformersEngine(
                EngineConfig(weights=tiny_llama, adapters=dict(lora_dirs), device=device)
            ),
            [(ids, a) for a in order[:3]],
        )
    )
    assert mixed == results[:3]


def test_bad_adapters_are_400s(
    tiny_llama: Path, lora_dirs: dict[str, Path], tmp_path: Path
) -> None:
    other = build_tiny_llama(tmp_path / "wider", hidden=48)
    wrong_dims = build_random_lora(other, tmp_path / "wrong-dims")
    app = create_app(EngineConfig(weights=tiny_llama, model_name="tiny", max_lora_rank=4))
    with TestClient(app) as client:
        r = client.post("/v1/adapters", json={"name": "big", "path": str(lora_dirs["beta"])})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["code"] == "adapter_rank_too_large"
        assert "rank 8" in err["message"] and "limit of 4" in err["message"]

        r = client.post("/v1/adapters", json={"name": "wide", "path": str(wrong_dims)})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["code"] == "adapter_mismatch"
        assert "q_proj" in err["message"] and "does not match the base model" in err["message"]

        # What its adapter_config.json's target_modules says must agree with its weights
        # and the base, as PEFT reads them (PEFT refuses the first, leaves out the second's
        # v_proj weights: served as they were, they gave other tokens than PEFT's).
        for targets, words in (
            (["wq"], "names no linear layer of the base model"),
            (["q_proj"], "a module its target_modules ['q_proj'] does not name"),
        ):
            edited = tmp_path / f"targets-{targets[0]}"
            shutil.copytree(lora_dirs["alpha"], edited)
            config = json.loads((edited / "adapter_config.json").read_text())
            (edited / "adapter_config.json").write_text(
                json.dumps({**config, "target_modules": targets})
            )
            r = client.post("/v1/adapters", json={"name": "edited", "path": str(edited)})
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["code"] == "adapter_mismatch" and words in err["message"], err

        r = client.post("/v1/adapters", json={"name": "none", "path": str(tmp_path)})
        assert r.status_code == 400 and "adapter_config.json" in r.json()["error"]["message"]

        r = client.post("/v1/adapters", json={"name": "bad:name", "path": str(tmp_path)})
        assert r.status_code == 400 and r.json()["error"]["param"] == "name"

        r = client.post("/v1/adapters", json={"name": "alpha", "path": str(lora_dirs["alpha"])})
        assert r.status_code == 200 and r.json()["rank"] == 4
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert ids == ["tiny", "tiny:alpha"]
        body = {"prompt": "hi", "max_tokens": 4, "temperature": 0}
        base = client.post("/v1/completions", json={**body, "model": "tiny"}).json()
        tuned = client.post("/v1/completions", json={**body, "model": "tiny:alpha"}).json()
        assert base["choices"][0]["text"] != tuned["choices"][0]["text"]
        assert client.delete("/v1/adapters/alpha").status_code == 200
        r = client.post("/v1/completions", json={**body, "model": "tiny:alpha"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert client.delete("/v1/adapters/alpha").status_code == 404
