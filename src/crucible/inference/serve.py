"""``python -m crucible.inference.serve``: run the model server alone.

    python -m crucible.inference.serve --engine transformers --weights DIR --port 8000
    python -m crucible.inference.serve --engine llama-cpp --weights model.gguf --port 8000

This is what a model deployment's container runs, and the "served directly" baseline of
``benchmarks/bench_inference.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from crucible.inference.config import ENGINES, EngineConfig

__all__ = ["main", "parse_args"]


def _adapter(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--adapter wants NAME=DIR, got {text!r}")
    return name, Path(path)


def parse_args(argv: list[str] | None = None) -> tuple[EngineConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m crucible.inference.serve", description="An OpenAI-compatible model server."
    )
    parser.add_argument("--engine", choices=ENGINES, default="transformers")
    parser.add_argument(
        "--weights",
        required=True,
        type=Path,
        help="model directory (transformers, vllm) or .gguf file (llama-cpp)",
    )
    parser.add_argument(
        "--model-name",
        default="",
        help="the id clients pass as 'model' (default: the weights' name)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0 ...")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--max-lora-rank", type=int, default=64)
    parser.add_argument(
        "--lora-budget-mb",
        type=float,
        default=256.0,
        help="memory for loaded LoRA adapters; the least recently used is evicted past it",
    )
    parser.add_argument(
        "--adapter",
        action="append",
        type=_adapter,
        default=[],
        metavar="NAME=DIR",
        help="register a PEFT LoRA adapter (repeatable; llama-cpp also takes a GGUF LoRA file)",
    )
    parser.add_argument(
        "--embeddings",
        type=Path,
        default=None,
        help="an embeddings model directory served at /v1/embeddings",
    )
    parser.add_argument(
        "--api-key-env",
        default="CRUCIBLE_INFERENCE_API_KEY",
        help="environment variable holding the bearer token every route but "
        "/health requires (unset: no token needed)",
    )
    args = parser.parse_args(argv)
    try:
        config = EngineConfig(
            weights=args.weights,
            engine=args.engine,
            model_name=args.model_name,
            device=args.device,
            dtype=args.dtype,
            max_batch_size=args.max_batch_size,
            max_model_len=args.max_model_len,
            max_lora_rank=args.max_lora_rank,
            lora_budget_bytes=int(args.lora_budget_mb * 1024 * 1024),
            adapters=dict(args.adapter),
            embeddings=args.embeddings,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return config, args


def main(argv: list[str] | None = None) -> int:
    config, args = parse_args(argv)
    import uvicorn

    from crucible.inference.server import create_app

    try:
        app = create_app(config, api_key=os.environ.get(args.api_key_env) or None)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
