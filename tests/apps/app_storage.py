"""Secrets, dicts and queues used from inside containers (tests/e2e/test_storage_e2e.py)."""

from __future__ import annotations

import hashlib
import os
import time

import crucible

app = crucible.App("storage")


@app.function(secrets=[crucible.Secret.from_name("api")])
def secret_digest() -> str:
    """Never returns or prints the value itself: the test searches for it everywhere."""
    return hashlib.sha256(os.environ["API_KEY"].encode()).hexdigest()


@app.function(secrets=[crucible.Secret.from_dict({"DEV_FLAG": "on"})])
def dev_flag() -> str:
    return os.environ.get("DEV_FLAG", "missing")


@app.function()
def produce(n: int) -> int:
    queue = crucible.Queue.from_name("work", create_if_missing=True)
    queue.put_many(list(range(n)))
    crucible.Dict.from_name("seen", create_if_missing=True)["producer"] = n
    return n


@app.function()
def consume(n: int) -> int:
    queue = crucible.Queue.from_name("work", create_if_missing=True)
    got: list[int] = []
    deadline = time.monotonic() + 30
    while len(got) < n and time.monotonic() < deadline:
        got += queue.get_many(n - len(got), timeout=5)
    seen = crucible.Dict.from_name("seen", create_if_missing=True)
    seen[("consumer", 1)] = sorted(got)
    return sum(got)


scheduled = crucible.App("ticker")


@scheduled.function(schedule=crucible.Period(seconds=1))
def tick() -> float:
    crucible.Queue.from_name("ticks", create_if_missing=True).put(time.time())
    return time.time()
