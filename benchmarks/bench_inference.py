"""Streaming chat completions through the exchange's OpenAI API vs the same engine served
directly (uvicorn on loopback), side by side in one run: time to first token (p50, p99) and
output tokens per second at 1, 8 and 32 concurrent streams.

The default engine is ``stub`` (benchmarks/_inference_app.py): a fixed 20 ms to the first
token and 5 ms per token, so what differs between the two columns is what Crucible adds (the
OpenAI API's work, and the request handed to the warm container on its web channel, the
engine's events coming back on it; server/web_channel.py). With
``--engine transformers|llama-cpp|vllm --weights DIR`` it serves that engine
(crucible.inference, from the ``inference`` extra) both ways instead. Prints a table and
writes ``benchmarks/results/bench_inference.json`` (``bench_inference_ENGINE.json`` for a real
engine)::

    .venv/bin/python benchmarks/bench_inference.py                 # stub engine
    .venv/bin/python benchmarks/bench_inference.py --requests 64 --tokens 32
    .venv/bin/python benchmarks/bench_inference.py --engine llama-cpp --weights model.gguf
    .venv/bin/python benchmarks/bench_inference.py --engine transformers --weights tiny

On a GPU machine, ``--gpu H200`` makes the exchange's function ask for that GPU (the engine
runs on CUDA on both sides) and ``--hidden/--layers/--heads`` size the random Llama (writes
``bench_inference_ENGINE_GPU.json``; scripts/gpu-check runs it)::

    python3 benchmarks/bench_inference.py --engine transformers --weights tiny \
        --hidden 1024 --layers 24 --heads 16 --gpu H200

``--weights tiny`` builds the tests' tiny random Llama (tests/inference/inference_testlib.py)
in a temporary directory: the real transformers engine, continuous batching and all, on a
model small enough that the figures show the serving path rather than the matrix products.

Goal (issue 14): Crucible adds at most 20% to the time to first token at one stream.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(BENCH))

from _exchange import Exchange, machine_info, percentile, print_table, write_results  # noqa: E402

from crucible.sdk._client import Client  # noqa: E402
from crucible.testing import free_port, wait_for  # noqa: E402

CONFIG = BENCH / "_inference_bench_config.py"
CONCURRENCY = (1, 8, 32)


async def one_stream(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], model: str, tokens: int
) -> tuple[float, int]:
    """(time to the first content token in ms, output tokens: the final usage chunk's count,
    else the content chunks; a real model may end its answer before ``tokens``)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "benchmark"}],
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,  # the same answer every time (a random model's samples vary)
    }
    t0 = time.perf_counter()
    ttft = None
    n = used = 0
    async with http.stream("POST", url, json=body, headers=headers) as r:
        assert r.status_code == 200, (r.status_code, await r.aread())
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = orjson.loads(line[5:])
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    if ttft is None:
                        ttft = (time.perf_counter() - t0) * 1000
                    n += 1
            if chunk.get("usage"):
                used = int(chunk["usage"]["completion_tokens"])
    used = used or n
    assert ttft is not None and 0 < used <= tokens, (ttft, n, used)
    return ttft, used


async def measure(
    base: str, headers: dict[str, str], model: str, requests: int, streams: int, tokens: int
) -> dict[str, Any]:
    url = f"{base}/chat/completions"
    ttfts: list[float] = []
    total = 0

    async def worker(count: int, http: httpx.AsyncClient) -> None:
        nonlocal total
        for _ in range(count):
            ttft, n = await one_stream(http, url, headers, model, tokens)
            ttfts.append(ttft)
            total += n

    limits = httpx.Limits(max_connections=streams + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        per = max(1, requests // streams)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(per, http) for _ in range(streams)))
        wall = time.perf_counter() - t0
    return {
        "streams": streams,
        "requests": len(ttfts),
        "output_tokens_per_s": round(total / wall, 1),
        "ttft_p50_ms": round(percentile(ttfts, 50), 2),
        "ttft_p99_ms": round(percentile(ttfts, 99), 2),
    }


def run_all(
    base: str, headers: dict[str, str], model: str, args: argparse.Namespace
) -> dict[int, dict[str, Any]]:
    asyncio.run(measure(base, headers, model, 8, 1, args.tokens))  # warm-up
    return {
        c: asyncio.run(measure(base, headers, model, max(args.requests, c), c, args.tokens))
        for c in CONCURRENCY
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--engine", default="stub", help="stub, transformers, llama-cpp or vllm")
    ap.add_argument("--weights", default="", help="the weights, for a real engine")
    ap.add_argument("--requests", type=int, default=64, help="streams per measurement")
    ap.add_argument("--tokens", type=int, default=32, help="output tokens per stream")
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for the exchange (e.g. CRUCIBLE_WEB_RELAY=false: every request a call)",
    )
    ap.add_argument(
        "--gpu",
        default=None,
        help="the model's function asks for this GPU (e.g. H200); the engine then runs on CUDA "
        "on both sides (the direct server sees every GPU of the machine)",
    )
    ap.add_argument("--hidden", type=int, default=32, help="--weights tiny: hidden size")
    ap.add_argument("--layers", type=int, default=2, help="--weights tiny: decoder layers")
    ap.add_argument("--heads", type=int, default=4, help="--weights tiny: attention heads")
    args = ap.parse_args()
    model: dict[str, Any] = {"weights": args.weights}
    if args.engine == "transformers" and args.weights == "tiny":
        args.weights = _tiny_llama(args.hidden, args.layers, args.heads)
        model = {
            "weights": "random Llama",
            "hidden": args.hidden,
            "layers": args.layers,
            "heads": args.heads,
            "params": _params(args.weights),
        }
    CONFIG.write_text(f"ENGINE = {args.engine!r}\nWEIGHTS = {args.weights!r}\nGPU = {args.gpu!r}\n")
    try:
        results = {"direct": _direct(args), "crucible": _through_crucible(args)}
    finally:
        CONFIG.unlink(missing_ok=True)

    rows = []
    for c in CONCURRENCY:
        d, x = results["direct"][c], results["crucible"][c]
        rows.append(
            (
                c,
                d["output_tokens_per_s"],
                x["output_tokens_per_s"],
                d["ttft_p50_ms"],
                x["ttft_p50_ms"],
                f"{(x['ttft_p50_ms'] / d['ttft_p50_ms'] - 1) * 100:+.0f}%",
                d["ttft_p99_ms"],
                x["ttft_p99_ms"],
            )
        )
    print_table(
        f"Streaming chat completions, engine {args.engine}: direct vs through Crucible",
        [
            "streams",
            "tok/s direct",
            "tok/s crucible",
            "TTFT p50 direct",
            "TTFT p50 crucible",
            "added",
            "TTFT p99 direct",
            "TTFT p99 crucible",
        ],
        rows,
    )
    name = "bench_inference" if args.engine == "stub" else f"bench_inference_{args.engine}"
    if args.gpu:
        name += f"_{args.gpu.lower()}"
    path = write_results(  # one file per engine (and GPU): the stub's stay beside a real one's
        name,
        {
            "benchmark": "inference",
            "engine": args.engine,
            "gpu": args.gpu,
            "device": _device_name(),
            "model": model,
            "tokens_per_stream": args.tokens,
            "results": {k: {str(c): v for c, v in r.items()} for k, r in results.items()},
            "machine": machine_info(),
        },
    )
    print(f"\nwrote {path}")


def _direct(args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "_inference_app:make_engine",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=BENCH,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _up(f"{base}/health"), 120, "the engine")
        return run_all(f"{base}/v1", {}, "bench", args)
    finally:
        server.terminate()
        server.wait()


def _through_crucible(args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    import _inference_app

    # The process runtime: the direct side runs unsandboxed too, and a sandbox's thread
    # limit stops a container streaming 32 answers at once (see docs/inference.md).
    env = {"CRUCIBLE_SCALEDOWN_WINDOW_S": "300", "CRUCIBLE_RUNTIME": "process"}
    env.update(kv.split("=", 1) for kv in args.env)
    with Exchange(env=env) as ex:
        token = ex.owner_token(f"bench-{uuid.uuid4().hex[:8]}")
        client = Client(ex.url, token)
        try:
            _inference_app.app.deploy(name="bench-model", client=client)
            client.post("/v1/models", {"name": "bench", "deployment": "bench-model"})
        finally:
            client.close()
        headers = {"authorization": f"Bearer {token}"}
        base = f"{ex.url}/openai/v1"
        wait_for(lambda: _ready(base, headers), 120, "the model")
        return run_all(base, headers, "bench", args)


def _tiny_llama(hidden: int, layers: int, heads: int) -> str:
    import tempfile

    sys.path.insert(0, str(REPO / "tests" / "inference"))
    from inference_testlib import build_tiny_llama

    root = Path(tempfile.mkdtemp(prefix="crucible-bench-tiny-"))
    return str(build_tiny_llama(root / "tiny-llama", hidden=hidden, layers=layers, heads=heads))


def _params(weights: str) -> int:
    """Parameters in the safetensors files of ``weights``."""
    from safetensors import safe_open

    total = 0
    for f in Path(weights).glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for key in st.keys():  # noqa: SIM118 - safe_open is not a mapping
                total += math.prod(st.get_slice(key).get_shape())
    return total


def _device_name() -> str:
    """The GPU the engine ran on (``cpu`` without one): torch's name for CUDA device 0."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _ready(base: str, headers: dict[str, str]) -> bool:
    body = {"model": "bench", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    try:
        return (
            httpx.post(
                f"{base}/chat/completions", json=body, headers=headers, timeout=60
            ).status_code
            == 200
        )
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
