"""One function of each kind, deployed and looked up by name (test_kinds_e2e.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import crucible

app = crucible.App("kinds")


@app.function()
def words(text: str) -> Iterator[str]:
    yield from text.split()


@app.function()
@crucible.batched(max_batch_size=4, wait_ms=10)
def lengths(texts: list[str]) -> list[int]:
    return [len(t) for t in texts]


@app.function()
@crucible.concurrent(max_inputs=4)
def shout(text: str) -> str:
    return text.upper()


@app.function()
def plain(x: int) -> int:
    return x + 1


@app.cls()
class Counter:
    def __init__(self, start: int = 0) -> None:
        self.start = start

    @crucible.enter()
    def ready(self) -> None:
        self.base = self.start * 10

    @crucible.method()
    def add(self, x: int) -> int:
        return self.base + x


@app.function()
@crucible.fastapi_endpoint(method="GET")
def hello(name: str = "world") -> dict[str, Any]:
    return {"hello": name}
