"""The real engine behind a model deployment, end to end: ``crucible model deploy --engine
transformers`` of a tiny random Llama built in the test, a LoRA adapter added with
``crucible model adapter add``, and the official ``openai`` client against a live exchange
(server, agent and worker processes): the adapter changes the tokens, a stream ends with its
usage chunk, and every request is charged per token in the ledger."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import Exchange, wait_for

pytest.importorskip("torch")
pytest.importorskip("peft")
openai = pytest.importorskip("openai")


def _cli(exchange: Exchange, token: str, *args: str) -> str:
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
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture
def sandboxed(tmp_path: Path) -> Iterator[Exchange]:
    """An exchange whose agent runs the bwrap runtime: a model's volume (its weights and
    adapters) is bound into its containers, which the process runtime cannot do."""
    from crucible.agent.sandbox import check_bwrap
    from crucible.errors import SandboxUnavailableError

    try:
        check_bwrap()
    except SandboxUnavailableError as exc:
        pytest.skip(f"no sandbox on this machine: {exc}")
    ex = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", CRUCIBLE_RUNTIME="bwrap")
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
        exchange, token, "model", "deploy", "tiny", "--weights", str(tiny_llama),
        "--engine", "transformers", "--cpu", "1", "--memory", "6GiB", "--max-containers", "1",
        "--price-input", "1", "--price-output", "2", "--public",
    )
    _cli(exchange, token, "model", "adapter", "add", "tiny", "alpha",
         "--path", str(lora_dirs["alpha"]))

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
    base = ai.chat.completions.create(
        model=label, messages=messages, max_tokens=12, temperature=0
    )
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
            model=f"{label}:alpha", messages=messages, max_tokens=12, temperature=0,
            stream=True, stream_options={"include_usage": True},
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
        wait_for(
            lambda: owner.get("/v1/models/tiny/usage")["requests"] == 3, 30, "the usage"
        )
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
