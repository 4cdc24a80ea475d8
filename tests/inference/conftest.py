"""Fixtures of the inference tests: a tiny random Llama and LoRA adapters for it, built once
per session in a temporary directory (nothing comes from a hub)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_testlib import build_random_lora, build_tiny_llama


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.fixture(params=["cpu", "cuda"])
def device(request: pytest.FixtureRequest) -> str:
    """The device the engine under test runs on: ``cpu`` always, ``cuda`` where torch sees a
    GPU (skipped elsewhere). Goldens stay on the CPU, so a cuda run compares the GPU path
    with the CPU reference."""
    if request.param == "cuda" and not _cuda_available():
        pytest.skip("no CUDA device (torch.cuda.is_available() is False)")
    return str(request.param)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def lora_dirs(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "alpha": build_random_lora(tiny_llama, root / "alpha", rank=4, seed=1),
        "beta": build_random_lora(
            tiny_llama,
            root / "beta",
            rank=8,
            seed=2,
            targets=("q_proj", "k_proj", "v_proj", "o_proj"),
        ),
        "gamma": build_random_lora(
            tiny_llama,
            root / "gamma",
            rank=4,
            seed=3,
            targets=("gate_proj", "up_proj", "down_proj"),
        ),
    }
