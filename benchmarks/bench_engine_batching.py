"""The transformers engine's continuous batching, in-process: output tokens/s and time to
first token (p50/p99) at 1, 8 and 32 concurrent streams, with batching off
(``max_batch_size=1``: one sequence at a time) and on (``max_batch_size=32``), side by side.

Each stream asks for ``--tokens`` greedy tokens (end of sequence ignored). Prints a table and
writes ``benchmarks/results/bench_engine_batching.json``. Usage::

    .venv/bin/python benchmarks/bench_engine_batching.py --weights DIR   # any local model
    .venv/bin/python benchmarks/bench_engine_batching.py --tiny          # a tiny random Llama

``--tiny`` builds the tests' tiny random Llama (``tests/inference/inference_testlib.py``) in a
temporary directory: it measures the engine's own overhead per step more than a model.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _exchange import write_results

from crucible.inference.config import EngineConfig
from crucible.inference.engine import GenerationRequest, SamplingParams
from crucible.inference.transformers_engine import TransformersEngine


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _stream(engine: TransformersEngine, prompt: list[int], n: int) -> tuple[float, int]:
    start = time.perf_counter()
    first = 0.0
    count = 0
    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    async for _ in engine.generate(GenerationRequest(prompt, params)):
        if count == 0:
            first = time.perf_counter() - start
        count += 1
    return first, count


async def _measure(
    weights: Path, batch: int, streams: list[int], tokens: int
) -> list[dict[str, Any]]:
    engine = TransformersEngine(EngineConfig(weights=weights, max_batch_size=batch))
    prompt = engine.encode("Continuous batching lets requests join and leave each step.")
    await engine.start()
    rows = []
    try:
        await _stream(engine, prompt, 4)  # warm-up
        for conc in streams:
            start = time.perf_counter()
            done = await asyncio.gather(*[_stream(engine, prompt, tokens) for _ in range(conc)])
            wall = time.perf_counter() - start
            ttft = [d[0] * 1000 for d in done]
            rows.append(
                {
                    "max_batch_size": batch,
                    "streams": conc,
                    "tokens_per_s": round(sum(d[1] for d in done) / wall, 1),
                    "ttft_p50_ms": round(statistics.median(ttft), 2),
                    "ttft_p99_ms": round(_pct(ttft, 0.99), 2),
                }
            )
    finally:
        await engine.stop()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--weights", type=Path)
    p.add_argument("--tiny", action="store_true", help="build a tiny random Llama")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--streams", default="1,8,32")
    args = p.parse_args()
    if not args.weights and not args.tiny:
        p.error("give --weights DIR or --tiny")
    streams = [int(s) for s in args.streams.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if weights is None:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "inference"))
            from inference_testlib import build_tiny_llama

            weights = build_tiny_llama(Path(tmp) / "tiny-llama")
        rows = []
        for batch in (1, max(streams)):
            rows += asyncio.run(_measure(weights, batch, streams, args.tokens))
    print(f"{'batch':>6} {'streams':>8} {'tokens/s':>10} {'TTFT p50 ms':>12} {'p99 ms':>8}")
    for r in rows:
        print(
            f"{r['max_batch_size']:>6} {r['streams']:>8} {r['tokens_per_s']:>10} "
            f"{r['ttft_p50_ms']:>12} {r['ttft_p99_ms']:>8}"
        )
    path = write_results(
        "bench_engine_batching",
        {
            "weights": "tiny random Llama" if args.tiny else str(weights),
            "tokens_per_stream": args.tokens,
            "rows": rows,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
