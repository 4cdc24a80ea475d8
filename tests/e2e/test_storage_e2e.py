"""Secrets, dicts, queues and schedules with real server, agent and worker processes."""

from __future__ import annotations

import hashlib
import queue as stdlib_queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import crucible
from crucible.sdk._client import Client

import app_storage
from harness import Exchange, wait_for

PLAINTEXT = "pl41ntext-API-KEY-3e8a1b77"


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.fixture
def client_for(exchange: Exchange) -> Iterator[Callable[[str], Client]]:
    """SDK clients of fresh accounts, closed at the end."""
    made: list[Client] = []

    def make(name: str) -> Client:
        made.append(exchange.client(exchange.tenant_token(name)))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_secrets_reach_only_the_container_and_nothing_else(
    exchange: Exchange, client_for: Callable[[str], Client]
) -> None:
    builder = client_for("secretive")
    crucible.Secret.create("api", {"API_KEY": PLAINTEXT}, client=builder)
    with app_storage.app.run(client=builder):
        digest = app_storage.secret_digest.remote()
        assert app_storage.dev_flag.remote() == "on"
        calls = builder.get("/v1/calls")
        spec = builder.get("/v1/apps")
    assert digest == hashlib.sha256(PLAINTEXT.encode()).hexdigest()
    # Nowhere else: the whole store (database and its WAL, blobs), every log file, and what
    # the API answered.
    hits = [str(p) for p in _files_under(exchange.root) if PLAINTEXT.encode() in p.read_bytes()]
    assert hits == []
    for answer in (calls, spec, builder.get("/v1/secrets")):
        assert PLAINTEXT not in repr(answer)


def test_a_missing_secret_refuses_the_run_naming_it(client_for: Callable[[str], Client]) -> None:
    builder = client_for("forgetful")
    with (
        pytest.raises(crucible.NotFoundError, match="secret 'api' not found"),
        app_storage.app.run(client=builder),
    ):
        pass


def test_dicts_and_queues_between_calls_and_clients(client_for: Callable[[str], Client]) -> None:
    builder = client_for("coordinator")
    crucible.Secret.create("api", {"API_KEY": "x"}, client=builder)
    with app_storage.app.run(client=builder):
        consumer = app_storage.consume.spawn(50)
        assert app_storage.produce.remote(50) == 50
        assert consumer.get(timeout=60) == sum(range(50))
    seen = crucible.Dict.from_name("seen", client=builder)
    assert seen["producer"] == 50
    assert seen[("consumer", 1)] == list(range(50))
    assert ("consumer", 1) in seen and "nope" not in seen
    assert sorted(map(repr, seen.keys())) == sorted([repr("producer"), repr(("consumer", 1))])
    q = crucible.Queue.from_name("work", client=builder)
    assert q.len() == 0
    with pytest.raises(stdlib_queue.Empty):
        q.get(timeout=0.2)
    q.put({"a": 1}, partition="p1")
    assert q.get(partition="p1", block=False) == {"a": 1}
    with pytest.raises(crucible.NotFoundError, match="create_if_missing"):
        crucible.Dict.from_name("never-made", client=builder)
    # What cannot be stored is named, with what to do (it was Python's bare TypeError).
    with pytest.raises(crucible.SerializationError, match="a value of Dict 'seen'") as bad:
        seen["lock"] = threading.Lock()
    assert "store plain data" in str(bad.value)
    with pytest.raises(crucible.SerializationError, match="an item of Queue 'work'"):
        q.put(threading.Lock())


def test_a_deployed_schedule_calls_its_function_on_time(
    client_for: Callable[[str], Client],
) -> None:
    builder = client_for("timekeeper")
    info = app_storage.scheduled.deploy(client=builder)
    assert info.schedules and info.schedules[0].schedule == "every 1 s"
    ticks = crucible.Queue.from_name("ticks", create_if_missing=True, client=builder)
    got = wait_for(lambda: ticks.get_many(10, timeout=1) or None, 60, "a scheduled tick")
    assert got
    builder.post("/v1/deployments/ticker/stop")
    scheduled = [c for c in builder.list_calls() if c.tick_ms is not None]
    assert scheduled and all(c.app_id == info.app_id for c in scheduled)
    ticks_ms = [c.tick_ms for c in scheduled]
    assert len(set(ticks_ms)) == len(ticks_ms)  # one call per tick
