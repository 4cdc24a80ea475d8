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
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, MutableMapping
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

    def __init__(self, app: ASGIApp, reload: Callable[[], Any] | None = None) -> None:
        self.app = app
        self.reload = reload
        self.loaded: set[str] = set()
        self._lock = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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


def engine_app(engine: str, weights: str, volume: Any = None) -> ASGIApp:
    """The engine's OpenAI-compatible app for ``weights`` (a directory or file as the
    container sees it), wrapped by :class:`AdapterLoader`. ``volume`` is the model's
    :class:`crucible.Volume` (adapters live under its ``adapters/``)."""
    try:
        server = importlib.import_module("crucible.inference.server")
    except ImportError as exc:
        raise RuntimeError(
            "this host cannot serve models: the inference engines are not installed "
            "(pip install 'crucible[inference]' in the host's environment or the image)"
        ) from exc
    app: ASGIApp = server.create_app(engine=engine, weights=weights)
    return AdapterLoader(app, volume.reload if volume is not None else None)
