"""A web endpoint for the web channel's tests (tests/e2e/test_web_channel_e2e.py): it echoes
request bodies, floods a response as fast as it can and says how far it got, streams slowly
for a client that leaves, fails, and dies."""

from __future__ import annotations

from fastapi import Request  # at module level: the annotations below are strings

import crucible

app = crucible.App("webchan")


@app.function()
@crucible.concurrent(max_inputs=4)
@crucible.asgi_app(public=True)
def api():  # type: ignore[no-untyped-def]
    import asyncio
    import hashlib
    import os

    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    web = FastAPI()
    produced: dict[str, int] = {}

    @web.post("/echo")
    async def echo(request: Request) -> dict[str, object]:
        body = await request.body()
        return {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}

    @web.get("/flood")
    async def flood(key: str, n: int, kib: int) -> StreamingResponse:
        chunk = b"y" * (kib * 1024)
        produced[key] = 0

        async def parts():  # type: ignore[no-untyped-def]
            for _ in range(n):
                produced[key] += 1
                yield chunk

        return StreamingResponse(parts(), media_type="application/octet-stream")

    @web.get("/slow")
    async def slow(key: str, n: int) -> StreamingResponse:
        produced[key] = 0

        async def parts():  # type: ignore[no-untyped-def]
            for i in range(n):
                produced[key] += 1
                yield f"{i}\n"
                await asyncio.sleep(0.05)
            produced[key] = -1  # ran to its end

        return StreamingResponse(parts(), media_type="text/plain")

    @web.get("/produced")
    async def progress(key: str) -> dict[str, int]:
        return {"produced": produced.get(key, 0)}

    @web.get("/boom")
    async def boom() -> None:
        print("about to break")
        raise RuntimeError("the endpoint broke")

    @web.get("/die")
    async def die() -> None:
        os._exit(3)

    return web


@app.function()
@crucible.asgi_app(public=True)
def single():  # type: ignore[no-untyped-def]
    """One request at a time (``max_inputs`` 1): says how many it ever ran at once."""
    import asyncio

    from fastapi import FastAPI

    web = FastAPI()
    running = {"now": 0, "peak": 0}

    @web.get("/hold")
    async def hold(s: float = 0.0) -> dict[str, int]:
        running["now"] += 1
        running["peak"] = max(running["peak"], running["now"])
        try:
            await asyncio.sleep(s)
        finally:
            running["now"] -= 1
        return running

    return web
