"""The functions the Crucible benchmarks call. Containers import this module, so it imports
nothing but crucible."""

from __future__ import annotations

import crucible

# Warm round trips and .map: one app kept running for the whole measurement.
app = crucible.App("bench-calls")


@app.function()
def noop() -> None:
    return None


@app.function()
def ident(x: int) -> int:
    return x


# Cold start: a new run of this app each time, so the scheduler must start a new container.
cold_app = crucible.App("bench-cold")


@cold_app.function()
def cold_noop() -> None:
    return None


# Control-plane memory: calls are inserted for this app's function directly in the store.
mem_app = crucible.App("bench-memory")


@mem_app.function()
def mem_noop() -> None:
    return None


# Scale-up: a burst of slow calls on a function allowed this many containers.
burst_app = crucible.App("bench-burst")


@burst_app.function(max_containers=8, cpu=0.1, memory=128)
def burst_sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


# Web: the same FastAPI handler behind the gateway (deployed) and under plain uvicorn.
web_app = crucible.App("bench-web")


def hello_handler(name: str = "world") -> dict[str, str]:
    return {"hello": name}


@web_app.function(min_containers=1)
@crucible.fastapi_endpoint(method="GET", public=True)
def hello(name: str = "world") -> dict[str, str]:
    return hello_handler(name)


def plain_fastapi():  # type: ignore[no-untyped-def]
    """The same handler as a FastAPI app for uvicorn (the baseline)."""
    from fastapi import FastAPI

    api = FastAPI()
    api.add_api_route("/", hello_handler, methods=["GET"])
    return api
