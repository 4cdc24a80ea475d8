"""The transformers engine's continuous batching: requests join and leave the running batch
per step, the batch never exceeds its size, a closed stream leaves at once, a full queue is a
429; the standalone server command on a loopback port; no heavy import at `import crucible`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from crucible.inference.api_errors import OpenAIError
from crucible.inference.config import EngineConfig
from crucible.inference.engine import GenerationRequest, SamplingParams
from crucible.inference.transformers_engine import TransformersEngine

from harness import free_port

pytest.importorskip("transformers")


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


async def tokens(engine: TransformersEngine, prompt: str, n: int) -> list[int]:
    return [
        s.token_id
        async for s in engine.generate(GenerationRequest(engine.encode(prompt), greedy(n)))
    ]


def test_requests_join_and_leave_within_the_batch_size(tiny_llama: Path) -> None:
    engine = TransformersEngine(EngineConfig(weights=tiny_llama, max_batch_size=3))
    jobs = [("short one", 3), ("a long one here", 20), ("mid", 8), ("x", 5), ("late", 12)]

    async def main() -> tuple[list[list[int]], list[list[int]]]:
        await engine.start()
        together = await asyncio.gather(*[tokens(engine, p, n) for p, n in jobs])
        alone = [await tokens(engine, p, n) for p, n in jobs]
        await engine.stop()
        return list(together), alone

    together, alone = asyncio.run(main())
    assert together == alone
    assert [len(t) for t in together] == [n for _, n in jobs]
    sizes = list(engine.batch_sizes)
    assert max(sizes) == 3  # the batch filled up and never went past its size
    # more requests than slots: the later ones joined as earlier ones left
    assert sizes.count(3) >= 5 and 1 in sizes


def test_closing_a_stream_leaves_the_batch(tiny_llama: Path) -> None:
    engine = TransformersEngine(EngineConfig(weights=tiny_llama, max_batch_size=4))

    async def main() -> int:
        await engine.start()
        stream = engine.generate(GenerationRequest(engine.encode("go"), greedy(10_000 // 40)))
        got = [await anext(stream), await anext(stream)]
        await stream.aclose()  # type: ignore[attr-defined]
        assert len(got) == 2
        # the next sequence runs alone: the closed one is no longer decoded
        before = len(engine.batch_sizes)
        await tokens(engine, "next", 4)
        await engine.stop()
        return max(list(engine.batch_sizes)[before:])

    assert asyncio.run(main()) == 1


def test_a_full_queue_is_429(tiny_llama: Path) -> None:
    engine = TransformersEngine(EngineConfig(weights=tiny_llama, max_batch_size=1, max_queued=1))

    async def main() -> None:
        await engine.start()
        running = engine.generate(GenerationRequest(engine.encode("a"), greedy(400)))
        await anext(running)  # it holds the one batch slot
        queued = engine.generate(GenerationRequest(engine.encode("b"), greedy(2)))
        waiting = asyncio.ensure_future(anext(queued))  # it holds the one queue place
        await asyncio.sleep(0.05)
        with pytest.raises(OpenAIError) as caught:
            await anext(engine.generate(GenerationRequest(engine.encode("c"), greedy(2))))
        assert caught.value.status == 429 and "waiting" in caught.value.message
        await running.aclose()  # type: ignore[attr-defined]
        await waiting  # the queued one runs once the slot is free
        await queued.aclose()  # type: ignore[attr-defined]
        await engine.stop()

    asyncio.run(main())


def test_import_crucible_loads_no_engine_library() -> None:
    code = (
        "import sys, crucible, crucible.inference.server, crucible.inference.serve; "
        "print([m for m in ('torch', 'transformers', 'peft', 'llama_cpp', 'vllm') "
        "if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


def test_serve_command_on_loopback(tiny_llama: Path) -> None:
    port = free_port()
    env = {**os.environ, "TEST_KEY": "k-123"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "crucible.inference.serve",
            "--weights",
            str(tiny_llama),
            "--model-name",
            "tiny",
            "--port",
            str(port),
            "--api-key-env",
            "TEST_KEY",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    assert json.load(r)["model"] == "tiny"
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        req = urllib.request.Request(
            base + "/v1/chat/completions",
            method="POST",
            data=json.dumps(
                {
                    "model": "tiny",
                    "max_tokens": 3,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": "hi"}],
                }
            ).encode(),
            headers={"Authorization": "Bearer k-123", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.load(r)["usage"]["completion_tokens"] == 3
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_serve_command_rejects_bad_arguments(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "crucible.inference.serve",
            "--weights",
            str(tmp_path),
            "--port",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2 and "not a transformers model directory" in out.stderr
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "crucible.inference.serve",
            "--weights",
            str(tmp_path),
            "--adapter",
            "nopath",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2 and "--adapter wants NAME=DIR" in out.stderr
