"""The adapter rank a deployed model serves: ``crucible model deploy --max-lora-rank`` reaches
the engine's config, and the engine's refusal names the options a user has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from crucible.cli.models import model_app_source
from crucible.inference.config import EngineConfig
from crucible.inference.server import create_app
from crucible.worker import model_serving


def test_deploy_passes_max_lora_rank_to_the_engine(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = model_app_source(
        "chat",
        "transformers",
        "/model/weights",
        gpu=None,
        cpu=1.0,
        memory="1GiB",
        min_containers=0,
        max_containers=1,
        concurrency=4,
        source_volume=None,
        max_lora_rank=128,
    )
    compile(source, "app.py", "exec")
    assert "max_lora_rank=128" in source

    seen: list[EngineConfig] = []

    def fake_create_app(config: EngineConfig) -> Any:
        seen.append(config)
        return object()  # never served here

    import crucible.inference.server as server

    monkeypatch.setattr(server, "create_app", fake_create_app)
    model_serving.engine_app("transformers", str(tiny_llama), name="chat", max_lora_rank=128)
    assert [c.max_lora_rank for c in seen] == [128]
    model_serving.engine_app("transformers", str(tiny_llama), name="chat")
    assert seen[-1].max_lora_rank == 64  # the engines' default


def test_rank_refusal_names_the_deploy_option(tiny_llama: Path, lora_dirs: dict[str, Path]) -> None:
    app = create_app(EngineConfig(weights=tiny_llama, model_name="tiny", max_lora_rank=2))
    with TestClient(app) as client:
        r = client.post("/v1/adapters", json={"name": "alpha", "path": str(lora_dirs["alpha"])})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "adapter_rank_too_large"
    assert "rank 4" in err["message"] and "limit of 2" in err["message"]
    assert "crucible model deploy" in err["message"] and "--max-lora-rank" in err["message"]
