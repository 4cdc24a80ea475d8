"""Web endpoints served through the gateway (the web tests deploy this app)."""

from __future__ import annotations

import time

from fastapi import Request, WebSocket  # at module level: the annotations are strings

import crucible

app = crucible.App("web")


@app.function()
@crucible.fastapi_endpoint(method="GET")
def hello(name: str = "world") -> dict[str, str]:
    return {"hello": name}


@app.function()
@crucible.asgi_app(public=True)
def api():  # type: ignore[no-untyped-def]
    from fastapi import FastAPI
    from fastapi.responses import Response, StreamingResponse

    web = FastAPI()

    @web.post("/echo")
    async def echo(body: dict[str, object]) -> dict[str, object]:
        return {"got": body}

    @web.get("/count")
    def count(n: int = 3) -> StreamingResponse:
        return StreamingResponse((f"{i}\n" for i in range(n)), media_type="text/plain")

    @web.get("/cookies")
    def cookies() -> Response:
        response = Response("two cookies")
        response.set_cookie("a", "1")
        response.set_cookie("b", "2")
        return response

    @web.get("/big")
    def big(kib: int = 256) -> Response:
        return Response(b"x" * (kib * 1024), media_type="application/octet-stream")

    @web.get("/slow")
    def slow(n: int = 3) -> StreamingResponse:
        def parts():  # type: ignore[no-untyped-def]
            for i in range(n):
                time.sleep(0.2)  # longer than the worker holds a response back
                yield f"{i}\n"

        return StreamingResponse(parts(), media_type="text/plain")

    @web.get("/die")
    def die() -> None:
        import os

        os._exit(3)  # the container dies mid-request

    @web.get("/boom")
    def boom() -> None:
        raise RuntimeError("the endpoint broke")

    @web.get("/seen")
    def seen(request: Request) -> dict[str, object]:
        """The request headers as the app got them."""
        return {
            "headers": [[k, v] for k, v in request.headers.items()],
            "raw_path": request.scope["raw_path"].decode("latin-1"),
            "utf": request.headers.get("x-utf", ""),
        }

    @web.get("/hostile")
    def hostile(kind: str) -> Response:
        """Responses a hostile or broken app makes."""
        if kind == "cookies":
            response = Response("cookies")
            response.set_cookie("crucible_session", "pwned")
            response.set_cookie("crucible_login", "pwned")
            response.set_cookie("mine", "kept")
            return response
        if kind == "crlf":
            return Response("x", headers={"x-bad": "a\r\nset-cookie: crucible_session=pwned"})
        if kind == "status":
            return Response("x", status_code=99)
        if kind == "framing":
            return Response("ok", headers={"transfer-encoding": "chunked"})
        if kind == "worker":  # a page that would take the whole origin for its service worker
            return Response(
                "<script>navigator.serviceWorker.register('sw.js', {scope: '/'})</script>",
                media_type="text/html",
                headers={
                    "service-worker-allowed": "/",
                    "cross-origin-opener-policy": "same-origin",
                },
            )
        return Response("empty?", status_code=204)

    @web.websocket("/shout")
    async def shout(ws: WebSocket) -> None:
        await ws.accept()
        while True:
            text = await ws.receive_text()
            if text == "bye":
                await ws.close()
                return
            await ws.send_text(text.upper())

    return web
