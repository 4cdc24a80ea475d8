"""What a model deployment's container serves: the inference engine's OpenAI-compatible app
(``crucible.inference.server``), behind a small ASGI layer that loads LoRA adapters on
demand.

The control plane's OpenAI API (server/api/openai.py) sends a request for ``NAME:ADAPTER``
with the headers ``x-crucible-adapter`` (the adapter's name, also put in the body's
``model``) and ``x-crucible-adapter-path`` (where the container reads it: under the model's
volume). The first such request in a container reloads the volume (so an adapter added after
the container started is there) and registers the adapter with the engine
(``POST /v1/adapters {"name", "path"}``); an engine that refuses it (a rank over its limit,
target modules that do not match the base) answers that request with its 400. The engine
keeps loaded adapters within its memory budget and evicts the least recently used.

The worker serves an ``@crucible.asgi_app`` without ASGI lifespan events, so
:class:`AdapterLoader` runs the wrapped app's lifespan startup itself before the first request
(the transformers engine starts its batching thread there).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import orjson

__all__ = ["AdapterLoader", "asgi_request", "engine_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ADAPTER_HEADER = b"x-crucible-adapter"
ADAPTER_PATH_HEADER = b"x-crucible-adapter-path"


async def asgi_request(
    app: ASGIApp, method: str, path: str, body: bytes = b""
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Send one HTTP request to an ASGI app in this process; (status, headers, body)."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 80),
    }
    sent = False
    status = 500
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # nothing more: a disconnect never comes early
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = int(message["status"])
            headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))

    await app(scope, receive, send)
    return status, headers, b"".join(chunks)


class AdapterLoader:
    """Wraps an engine's ASGI app: registers an adapter with the engine on the first request
    that names it (see the module docstring). ``reload`` is called before a registration
    (the model volume's ``reload``), so adapters added after the container started are
    found."""

    def __init__(
        self, app: ASGIApp, reload: Callable[[], Any] | None = None, *, lifespan: bool = False
    ) -> None:
        self.app = app
        self.reload = reload
        self.loaded: set[str] = set()
        self._lock = asyncio.Lock()
        self._lifespan = lifespan
        self._started: asyncio.Future[None] | None = None
        self._lifespan_task: asyncio.Task[None] | None = None

    async def _startup(self) -> None:
        """Run the wrapped app's lifespan startup once (concurrent first requests wait for
        it); a failed startup fails every request with its error."""
        if self._started is None:
            loop = asyncio.get_running_loop()
            started: asyncio.Future[None] = loop.create_future()
            self._started = started
            events: asyncio.Queue[Message] = asyncio.Queue()
            await events.put({"type": "lifespan.startup"})

            async def receive() -> Message:
                return await events.get()  # shutdown never comes: the container just exits

            async def send(message: Message) -> None:
                if message["type"] == "lifespan.startup.complete" and not started.done():
                    started.set_result(None)
                elif message["type"] == "lifespan.startup.failed" and not started.done():
                    started.set_exception(RuntimeError(message.get("message") or "startup failed"))

            async def run() -> None:
                try:
                    await self.app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
                except BaseException as exc:  # the app's startup raised
                    if not started.done():
                        started.set_exception(exc)
                    raise
                if not started.done():  # an app without lifespan support returned at once
                    started.set_result(None)

            self._lifespan_task = loop.create_task(run())
        await asyncio.shield(self._started)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._lifespan and scope["type"] in ("http", "websocket"):
            await self._startup()
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            name = headers.get(ADAPTER_HEADER, b"").decode()
            if name and name not in self.loaded:
                path = headers.get(ADAPTER_PATH_HEADER, b"").decode()
                refused = await self._load(name, path)
                if refused is not None:
                    status, body = refused
                    await send(
                        {
                            "type": "http.response.start",
                            "status": status,
                            "headers": [(b"content-type", b"application/json")],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)

    async def _load(self, name: str, path: str) -> tuple[int, bytes] | None:
        async with self._lock:
            if name in self.loaded:
                return None
            if self.reload is not None:
                await asyncio.to_thread(self.reload)
            status, _, body = await asgi_request(
                self.app, "POST", "/v1/adapters", orjson.dumps({"name": name, "path": path})
            )
            if status >= 300 and status != 409:  # 409: the engine has it already
                return status, body
            self.loaded.add(name)
            return None


def _device(engine: str) -> str:
    """``cuda`` where the container sees a GPU and the engine runs on torch, else ``cpu``
    (llama-cpp picks its own backend)."""
    if engine not in ("transformers", "vllm"):
        return "cpu"
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def engine_app(
    engine: str,
    weights: str,
    volume: Any = None,
    *,
    name: str = "",
    max_batch_size: int = 8,
    max_model_len: int = 2048,
    max_lora_rank: int = 64,
) -> ASGIApp:
    """The engine's OpenAI-compatible app for ``weights`` (a directory or file as the
    container sees it), wrapped by :class:`AdapterLoader`. ``volume`` is the model's
    :class:`crucible.Volume` (adapters live under its ``adapters/``); ``name`` is the model's
    name, which the control plane sends as ``model`` for base requests; ``max_batch_size``:
    the sequences the engine decodes together (``model deploy`` passes its concurrency, so a
    container's requests are batched rather than queued behind a batch of 8);
    ``max_model_len``: the context window in tokens (the model's registered
    ``context_length``, which bounds what a request may be charged); ``max_lora_rank``: the
    highest adapter rank served (``model deploy --max-lora-rank``)."""
    try:
        server = importlib.import_module("crucible.inference.server")
        config_module = importlib.import_module("crucible.inference.config")
    except ImportError as exc:
        raise RuntimeError(
            "this host cannot serve models: the inference engines are not installed "
            "(pip install 'crucible[inference]' in the host's environment or the image)"
        ) from exc
    device = _device(engine)
    config = config_module.EngineConfig(
        weights=Path(weights),
        engine=engine,
        model_name=name,
        device=device,
        dtype="float16" if device == "cuda" else "float32",
        max_batch_size=max_batch_size,
        max_model_len=max_model_len,
        max_lora_rank=max_lora_rank,
    )
    app: ASGIApp = server.create_app(config)
    return AdapterLoader(app, volume.reload if volume is not None else None, lifespan=True)
