"""The container's event loop for a web endpoint's app (worker/web.py): a FastAPI endpoint's
plain ``def`` route runs in AnyIO's worker threads, which must be reused from one request to
the next (the loop runs under a root task that AnyIO finds). Before, every request started a
thread of its own and stopped it when the request ended."""

from __future__ import annotations

import threading

from crucible.worker.web import app_loop, build_asgi_app, http_parts


def test_a_plain_def_route_reuses_its_worker_thread() -> None:
    threads: list[threading.Thread] = []  # held, so that no two threads share an identity

    def hello(name: str = "x") -> dict[str, str]:
        threads.append(threading.current_thread())
        return {"hello": name}

    app = build_asgi_app(hello, {"kind": "fastapi_endpoint", "method": "GET"})
    for _ in range(10):
        parts = list(http_parts(app, {"method": "GET", "path": "/", "query": "name=a"}))
        assert parts[0]["status"] == 200
    assert len(threads) == 10
    assert len(set(threads)) == 1, f"{len(set(threads))} threads for 10 requests"
    assert threads[0] is not threading.current_thread()
    assert app_loop().is_running()
