"""Fine-tuning on CPU with the tiny Llama: the real command in a subprocess prints its loss
as JSON lines, the loss goes down, and the adapter it writes serves and changes outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from crucible.inference.config import EngineConfig
from crucible.inference.server import create_app

pytest.importorskip("peft")

ALL_LINEAR = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
DATA = [
    {"prompt": "Q: sky? A:", "completion": " blue"},
    {"prompt": "Q: grass? A:", "completion": " green"},
    {"messages": [{"role": "user", "content": "sky?"}, {"role": "assistant", "content": "blue"}]},
    {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "grass?"},
            {"role": "assistant", "content": "green"},
        ]
    },
]


def finetune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crucible.inference.finetune", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_loss_goes_down_and_adapter_serves(tiny_llama: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", DATA)
    out = tmp_path / "adapter"
    done = finetune(
        "--base",
        str(tiny_llama),
        "--data",
        str(data),
        "--method",
        "lora",
        "--rank",
        "16",
        "--epochs",
        "60",
        "--lr",
        "1e-2",
        "--batch-size",
        "4",
        "--target-modules",
        ALL_LINEAR,
        "--checkpoint-every",
        "20",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    steps = [e for e in events if e["event"] == "step"]
    assert events[0]["event"] == "start" and events[0]["examples"] == 4
    assert len(steps) == 60
    assert steps[-1]["loss"] < steps[0]["loss"] / 3
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [20, 40, 60]
    assert (out / "checkpoints" / "step-20" / "adapter_model.safetensors").is_file()
    assert events[-1] == {
        "event": "done",
        "adapter": str(out),
        "steps": 60,
        "final_loss": steps[-1]["loss"],
    }

    app = create_app(EngineConfig(weights=tiny_llama, model_name="tiny"))
    with TestClient(app) as client:
        assert (
            client.post("/v1/adapters", json={"name": "colors", "path": str(out)}).status_code
            == 200
        )
        body = {"prompt": "Q: sky? A:", "max_tokens": 6, "temperature": 0}
        base = client.post("/v1/completions", json={**body, "model": "tiny"}).json()
        tuned = client.post("/v1/completions", json={**body, "model": "tiny:colors"}).json()
        assert tuned["choices"][0]["text"] == " blue"
        assert base["choices"][0]["text"] != " blue"
        chat = client.post(
            "/v1/chat/completions",
            json={
                "model": "tiny:colors",
                "temperature": 0,
                "max_tokens": 6,
                "messages": [{"role": "user", "content": "grass?"}],
            },
        ).json()
        assert chat["choices"][0]["message"]["content"] == "green"
        assert chat["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (['{"prompt": "a"}'], "train.jsonl:1: 'prompt' and 'completion' must both be strings"),
        (['{"prompt": "a", "completion": "b"}', "not json"], "train.jsonl:2: not valid JSON"),
        (
            ['{"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]}'],
            "the last message must be the assistant's answer",
        ),
        (['{"text": "x"}'], "unknown record with keys ['text']"),
        ([], "no training examples"),
    ],
)
def test_bad_data_is_a_clear_error(
    tiny_llama: Path, tmp_path: Path, lines: list[str], problem: str
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(line + "\n" for line in lines))
    done = finetune("--base", str(tiny_llama), "--data", str(data), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    error = json.loads(done.stdout.splitlines()[-1])
    assert error["event"] == "error" and problem in error["message"]


def test_bad_arguments(tiny_llama: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", DATA)
    done = finetune(
        "--base",
        str(tiny_llama),
        "--data",
        str(data),
        "--method",
        "full",
        "--out",
        str(tmp_path / "o"),
    )
    assert done.returncode == 2 and "use --method lora" in done.stderr
    done = finetune(
        "--base",
        str(tiny_llama),
        "--data",
        str(data),
        "--target-modules",
        "c_attn",
        "--out",
        str(tmp_path / "o"),
    )
    assert done.returncode == 2 and "c_attn not in the base model" in done.stderr
