"""A stand-in OpenAI-compatible engine for the control plane's OpenAI API tests: it speaks
the protocol (chat and text completions, SSE streams with a final usage chunk, embeddings in
float and base64, adapters) over a trivial "model" whose tokens are words: it answers with
the words of the last message, reversed, up to ``max_tokens``. The real engines
(crucible.inference) are tested on their own; this one makes the exchange's side testable
on any machine, and exercises the container's adapter loader (worker/model_serving.py)."""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

from fastapi import Request  # at module level: the annotations below are strings

import crucible

app = crucible.App("echo-model")


@app.function(max_containers=2)
@crucible.concurrent(max_inputs=16)
@crucible.asgi_app()
def serve():  # type: ignore[no-untyped-def]
    import orjson
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    from crucible.worker.model_serving import AdapterLoader

    web = FastAPI()
    adapters: dict[str, str] = {}

    def error(status: int, message: str, param: str | None = None) -> JSONResponse:
        body = {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": param,
                "code": None,
            }
        }
        return JSONResponse(body, status_code=status)

    def answer(body: dict[str, Any], prompt: str, chat: bool) -> tuple[list[str], int]:
        words = prompt.split()
        # As OpenAI's and vLLM's servers: chat prefers max_completion_tokens, text
        # completions know only max_tokens.
        wanted = body.get("max_completion_tokens") if chat else None
        limit = wanted or body.get("max_tokens") or 16
        out = list(reversed(words))[:limit]
        model = body["model"]
        if model in adapters:
            out = [f"[{model}]", *out][:limit]
        return out, len(words)

    @web.post("/v1/adapters")
    async def add_adapter(request: Request) -> Any:
        body = await request.json()
        if "bad" in body["name"]:
            return error(400, f"adapter {body['name']}: rank 4096 is over this engine's limit")
        adapters[body["name"]] = body["path"]
        return {"name": body["name"], "loaded": True}

    @web.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        if not body.get("messages"):
            return error(400, "'messages' must be a non-empty list", "messages")
        prompt = " ".join(str(m.get("content", "")) for m in body["messages"])
        if prompt == "boom":
            raise RuntimeError("the engine broke")  # a 500 from the engine
        if prompt == "never json" and body.get("response_format"):
            # As Crucible's engine when no attempt validates: a 422 that says what it spent.
            failed = error(
                422, "the model's output is not JSON after 3 attempts", "response_format"
            )
            spent = {"prompt_tokens": 2, "completion_tokens": 6, "total_tokens": 8}
            return JSONResponse({**orjson.loads(failed.body), "usage": spent}, status_code=422)
        out, n_in = answer(body, prompt, chat=True)
        return _reply(body, out, n_in, chat=True)

    @web.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        if "prompt" not in body:  # a framework's refusal, not in OpenAI's shape
            detail = [{"loc": ["body", "prompt"], "msg": "Field required", "type": "missing"}]
            return JSONResponse({"detail": detail}, status_code=422)
        out, n_in = answer(body, str(body.get("prompt", "")), chat=False)
        return _reply(body, out, n_in, chat=False)

    def _reply(body: dict[str, Any], out: list[str], n_in: int, chat: bool) -> Any:
        usage = {
            "prompt_tokens": n_in,
            "completion_tokens": len(out),
            "total_tokens": n_in + len(out),
        }
        kind = "chat.completion" if chat else "text_completion"
        created = int(time.time())
        if not body.get("stream"):
            text = " ".join(out)
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            return {
                "id": "cmpl-1",
                "object": kind,
                "created": created,
                "model": body["model"],
                "choices": [choice],
                "usage": usage,
            }

        options = body.get("stream_options") or {}
        # vLLM's continuous_usage_stats (or a prompt starting with "running"): a running
        # usage in every chunk; the latter also sends no usage-only chunk at the end.
        running = bool(options.get("continuous_usage_stats")) or (out[-1:] == ["running"])

        def events() -> Any:
            for i, word in enumerate(out):
                piece = word if i == 0 else " " + word
                delta: dict[str, Any] = {"index": 0, "finish_reason": None, "logprobs": None}
                if chat:
                    delta["delta"] = {"content": piece, **({"role": "assistant"} if i == 0 else {})}
                else:
                    delta["text"] = piece
                chunk = {
                    "id": "cmpl-1",
                    "object": kind + (".chunk" if chat else ""),
                    "created": created,
                    "model": body["model"],
                    "choices": [delta],
                }
                if running:
                    chunk["usage"] = {
                        "prompt_tokens": n_in,
                        "completion_tokens": i + 1,
                        "total_tokens": n_in + i + 1,
                    }
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
            last: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
            if chat:
                last["delta"] = {}
            else:
                last["text"] = ""
            yield (
                b"data: "
                + orjson.dumps(
                    {
                        "id": "cmpl-1",
                        "object": kind,
                        "created": created,
                        "model": body["model"],
                        "choices": [last],
                    }
                )
                + b"\n\n"
            )
            if options.get("include_usage") and out[-1:] != ["running"]:
                yield (
                    b"data: "
                    + orjson.dumps(
                        {
                            "id": "cmpl-1",
                            "object": kind,
                            "created": created,
                            "model": body["model"],
                            "choices": [],
                            "usage": usage,
                        }
                    )
                    + b"\n\n"
                )
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @web.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        body = await request.json()
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = []
        for i, text in enumerate(inputs):
            vector = [float(len(str(text))), float(len(str(text).split())), 0.5]
            if body.get("encoding_format") == "base64":
                emb: Any = base64.b64encode(struct.pack("<3f", *vector)).decode()
            else:
                emb = vector
            data.append({"object": "embedding", "index": i, "embedding": emb})
        n = sum(len(str(t).split()) for t in inputs)
        return {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": n, "total_tokens": n},
        }

    return AdapterLoader(web)
