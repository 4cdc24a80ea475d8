"""The model bench_inference.py serves, directly and through the exchange. Containers import
this module, so it imports nothing at module level but crucible (and the config module the
benchmark writes beside it, which names the engine).

``stub``: an OpenAI-compatible streaming server with a fixed time to first token and a fixed
time per token (asyncio sleeps, so concurrent streams do not slow each other, as with an
engine that batches them). It isolates what the exchange adds. Any other engine name serves
``crucible.worker.model_serving.engine_app`` (what ``crucible model deploy`` serves) over that
engine, its served name ``bench``.
"""

from __future__ import annotations

from typing import Any

import crucible

try:
    import _inference_bench_config as config  # written by bench_inference.py
except ImportError:  # pragma: no cover - imported for a direct run without a config
    config = None  # type: ignore[assignment]

app = crucible.App("bench-model")


def stub_app(prefill_s: float = 0.02, per_token_s: float = 0.005) -> Any:
    import asyncio
    import time

    import orjson
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def chat(request: Any) -> Any:
        body = await request.json()
        n = int(body.get("max_tokens") or 16)
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            data = {
                "id": "bench",
                "object": "chat.completion.chunk",
                "created": created,
                "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return b"data: " + orjson.dumps(data) + b"\n\n"

        async def events() -> Any:
            await asyncio.sleep(prefill_s)
            for i in range(n):
                if i:
                    await asyncio.sleep(per_token_s)
                yield chunk({"content": f" t{i}"})
            yield chunk({}, "stop")
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": 8 + n}
                data = {
                    "id": "bench",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": body["model"],
                    "choices": [],
                    "usage": usage,
                }
                yield b"data: " + orjson.dumps(data) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def health(request: Any) -> Any:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/health", health),
        ]
    )


def make_engine() -> Any:
    engine = config.ENGINE if config else "stub"
    if engine == "stub":
        return stub_app()
    from crucible.worker.model_serving import engine_app

    return engine_app(engine, config.WEIGHTS if config else "", name="bench")


# --gpu MODEL: the container asks for that GPU (without one, CUDA_VISIBLE_DEVICES is empty
# there and the engine runs on the CPU while the direct side has the GPU).
GPU = getattr(config, "GPU", None) if config else None


@app.function(cpu=1, gpu=GPU, min_containers=1, max_containers=1)
@crucible.concurrent(max_inputs=64)
@crucible.asgi_app()
def serve() -> Any:
    return make_engine()
