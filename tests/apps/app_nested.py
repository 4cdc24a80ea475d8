"""Functions that call other functions of their own app from inside their containers
(Modal's function composition): .remote, .spawn, .map, .remote_gen, a class's methods, and
an async web endpoint awaiting .remote.aio."""

from __future__ import annotations

from typing import Any

import crucible

app = crucible.App("nested")
SMALL = {"cpu": 0.125, "memory": "256MiB", "timeout": 120}


@app.function(**SMALL)
def square(x: int) -> int:
    return x * x


@app.function(**SMALL)
def count(n: int):  # type: ignore[no-untyped-def]
    yield from range(n)


@app.cls(**SMALL)
class Scaler:
    def __init__(self, factor: int = 2) -> None:
        self.factor = factor

    @crucible.method()
    def scale(self, x: int) -> int:
        return x * self.factor


@app.function(**SMALL)
def compose(x: int) -> dict[str, Any]:
    """Every way of calling another function of the app, from inside this one."""
    call = square.spawn(x + 1)
    return {
        "remote": square.remote(x),
        "spawned": call.get(timeout=100),
        "again": crucible.FunctionCall.from_id(call.object_id).get(),
        "map": list(square.map(range(5))),
        "gen": list(count.remote_gen(3)),
        "default_pool": Scaler().scale.remote(x),
        "other_pool": Scaler(factor=10).scale.remote(x),
        "pool_map": list(Scaler(factor=3).scale.map([1, 2])),
    }


@app.function(**SMALL)
@crucible.fastapi_endpoint(method="GET")
async def web_square(x: int = 3) -> dict[str, int]:
    return {"square": await square.remote.aio(x)}


elsewhere = crucible.App("nested-elsewhere")


@elsewhere.function(**SMALL)
def stranger(x: int) -> int:
    return x


@app.function(**SMALL)
def refused(call_id: str) -> dict[str, str]:
    """What a container cannot reach, in its words: another app's function, a deployment by
    name, and a call it did not make."""
    said: dict[str, str] = {}
    for label, attempt in (
        ("other_app", lambda: stranger.remote(1)),
        ("from_name", lambda: crucible.Function.from_name("nested", "square")),
        ("not_mine", lambda: crucible.FunctionCall.from_id(call_id).get(timeout=5)),
    ):
        try:
            attempt()
            said[label] = "no error"
        except Exception as exc:
            said[label] = f"{type(exc).__name__}: {exc}"
    return said
