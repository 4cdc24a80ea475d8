"""The OpenAI-compatible model server: ``create_app(config)`` returns its ASGI app.

Routes: ``GET /health`` (no token), ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions``, ``POST /v1/embeddings``, ``GET|POST /v1/adapters`` and
``DELETE /v1/adapters/{name}``. ``model`` is the served name, ``NAME:ADAPTER`` or an
adapter's name. When the config has an ``api_key`` every route but ``/health`` needs it as
a bearer token. Errors are OpenAI's shape (:mod:`crucible.inference.api_errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from crucible.inference import completions
from crucible.inference.api_errors import OpenAIError, not_found
from crucible.inference.config import EngineConfig
from crucible.inference.engine import Engine
from crucible.inference.schemas import (
    AdapterLoad,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)

__all__ = ["create_app", "load_engine"]


def load_engine(config: EngineConfig) -> Engine:
    """Build the engine named by ``config.engine`` (importing its libraries only now)."""
    if config.engine == "transformers":
        from crucible.inference.transformers_engine import TransformersEngine

        engine: Engine = TransformersEngine(config)
        return engine
    if config.engine == "llama-cpp":
        from crucible.inference.llama_cpp_engine import LlamaCppEngine

        return LlamaCppEngine(config)
    from crucible.inference.vllm_engine import VllmEngine

    return VllmEngine(config)


def _error(exc: OpenAIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def create_app(
    config: EngineConfig, *, engine: Engine | None = None, api_key: str | None = None
) -> FastAPI:
    """The model server's app. ``engine`` defaults to the one ``config`` names; the
    embeddings model (``config.embeddings``) is loaded on first use."""
    state = completions.ServerState(config=config, engine=engine or load_engine(config))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await state.engine.start()
        try:
            yield
        finally:
            await state.engine.stop()

    app = FastAPI(title="Crucible model server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.inference = state

    @app.exception_handler(OpenAIError)
    async def _openai_error(_request: Request, exc: OpenAIError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message, param = "the request body is not valid JSON", None
        elif param:
            message = f"{param}: {message}"
        return _error(OpenAIError(400, message, param=param, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _error(OpenAIError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(Exception)
    async def _crash(_request: Request, exc: Exception) -> JSONResponse:
        return _error(
            OpenAIError(
                500,
                f"internal error: {type(exc).__name__}",
                type="server_error",
                code="internal_error",
            )
        )

    @app.middleware("http")
    async def _auth(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if api_key and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            token = given[7:] if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                return _error(
                    OpenAIError(
                        401,
                        "a valid API key is required: send 'Authorization: Bearer KEY'",
                        code="invalid_api_key",
                    )
                )
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "engine": state.engine.name, "model": config.served_name}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        created = state.created
        data = [
            {
                "id": config.served_name,
                "object": "model",
                "created": created,
                "owned_by": "crucible",
            }
        ]
        for info in state.engine.adapters():
            data.append(
                {
                    "id": f"{config.served_name}:{info.name}",
                    "object": "model",
                    "created": created,
                    "owned_by": "crucible",
                    "parent": config.served_name,
                }
            )
        if config.embeddings is not None:
            data.append(
                {
                    "id": state.embeddings_name,
                    "object": "model",
                    "created": created,
                    "owned_by": "crucible",
                }
            )
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        for entry in (await models())["data"]:
            if entry["id"] == model_id:
                return dict(entry)
        raise not_found(f"the model {model_id!r} does not exist", param="model")

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest) -> Response:
        if body.stream:
            stream = completions.chat_stream(state, body)
            first = await _first(stream)
            return _sse(first, stream)
        return _json(await completions.chat(state, body))

    @app.post("/v1/completions", response_model=None)
    async def complete(body: CompletionRequest) -> Response:
        if body.stream:
            stream = completions.completion_stream(state, body)
            first = await _first(stream)
            return _sse(first, stream)
        return _json(await completions.completion(state, body))

    @app.post("/v1/embeddings", response_model=None)
    async def embeddings(body: EmbeddingRequest) -> Response:
        return _json(await completions.embed(state, body))

    @app.get("/v1/adapters")
    async def adapters() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [completions.adapter_json(i) for i in state.engine.adapters()],
        }

    @app.post("/v1/adapters")
    async def load_adapter(body: AdapterLoad) -> dict[str, Any]:
        info = await asyncio.to_thread(state.engine.load_adapter, body.name, body.path)
        return completions.adapter_json(info)

    @app.delete("/v1/adapters/{name}")
    async def unload_adapter(name: str) -> dict[str, Any]:
        # in a thread: an engine may wait for the sequence it is running (llama-cpp)
        await asyncio.to_thread(state.engine.unload_adapter, name)
        return {"id": name, "object": "adapter", "deleted": True}

    return app


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


async def _first(stream: AsyncIterator[dict[str, Any]]) -> dict[str, Any] | None:
    """Run a stream to its first chunk, so that a bad request is a plain error response
    rather than an SSE stream that fails after its 200."""
    try:
        return await anext(stream)
    except StopAsyncIteration:
        return None


def _sse(first: dict[str, Any] | None, stream: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def events() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield b"data: " + orjson.dumps(first) + b"\n\n"
                async for chunk in stream:
                    yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        except OpenAIError as exc:
            yield b"data: " + orjson.dumps(exc.body()) + b"\n\n"
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        yield b"data: [DONE]\n\n"

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
