"""Fixtures of the inference tests: a tiny random Llama and LoRA adapters for it, built once
per session in a temporary directory (nothing comes from a hub)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_testlib import build_random_lora, build_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def lora_dirs(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "alpha": build_random_lora(tiny_llama, root / "alpha", rank=4, seed=1),
        "beta": build_random_lora(tiny_llama, root / "beta", rank=8, seed=2,
                                  targets=("q_proj", "k_proj", "v_proj", "o_proj")),
        "gamma": build_random_lora(tiny_llama, root / "gamma", rank=4, seed=3,
                                   targets=("gate_proj", "up_proj", "down_proj")),
    }
