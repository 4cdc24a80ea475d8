"""Wake-ups between replicas through LISTEN/NOTIFY on a real PostgreSQL store."""

from __future__ import annotations

import asyncio

import pytest

from crucible.server.store.db import create_store_engine
from crucible.server.wakeup_bus import MAX_PAYLOAD_BYTES, PgWakeupBus, pack
from crucible.server.wakeups import Wakeups


def test_batches_are_split_under_the_payload_limit() -> None:
    keys = {f"call:{i:032d}" for i in range(2_000)}  # ~80 KB of keys
    payloads = pack("r-1", keys)
    assert len(payloads) > 1
    assert all(len(p.encode()) <= MAX_PAYLOAD_BYTES for p in payloads)
    got = [k for p in payloads for k in p.split("\n")[1:]]
    assert sorted(got) == sorted(keys)
    assert all(p.startswith("r-1\n") for p in payloads)
    assert pack("r-1", []) == []
    # A key PostgreSQL would refuse is left out rather than failing the batch.
    assert pack("r-1", ["x" * 8_000, "call:a", "bad\nkey"]) == ["r-1\ncall:a"]


@pytest.mark.postgres
def test_a_notify_on_one_replica_wakes_a_waiter_on_another(postgres_url: str) -> None:
    engine = create_store_engine(postgres_url)

    async def scenario() -> None:
        a, b = Wakeups(), Wakeups()
        bus_a = PgWakeupBus(engine, a, "replica-a")
        bus_b = PgWakeupBus(engine, b, "replica-b")
        await bus_a.start()
        await bus_b.start()
        try:
            with b.listen("call:x") as event:
                a.notify("call:x")
                await asyncio.wait_for(event.wait(), timeout=10)
            # A large batch arrives whole, in several notifications.
            keys = [f"call:{i:032d}" for i in range(1_000)]
            with b.listen(keys[-1]) as last, b.listen(keys[0]) as first:
                a.notify_many(keys)
                await asyncio.wait_for(asyncio.gather(last.wait(), first.wait()), timeout=10)
            # The scheduler of the other replica is kicked; a replica ignores its own echo.
            b.scheduler.clear()
            a.kick_scheduler()
            await asyncio.wait_for(b.scheduler.wait(), timeout=10)
            assert bus_a.received == 0
            # A value for a handler (a generator caller's read count) crosses too.
            got: list[str] = []
            b.on_remote("consumed=", got.append)
            with b.listen("marker") as marker:
                a.share("consumed=", "ca-1:300")
                a.notify("marker")
                await asyncio.wait_for(marker.wait(), timeout=10)
            assert got == ["ca-1:300"]
        finally:
            await bus_a.stop()
            await bus_b.stop()

    try:
        asyncio.run(scenario())
    finally:
        engine.dispose()


def test_work_for_a_function_with_live_workers_elsewhere_does_not_kick_the_scheduler() -> None:
    """Through a balancer, a call lands on one replica and the function's idle worker waits on
    another: the key goes to every replica, and the leader's scheduler is kicked only when no
    worker of the function was seen lately (a cold start). It was kicked for every such call,
    a full scheduler pass per call on the leader."""
    now = [100.0]
    w = Wakeups(now_s=lambda: now[0])
    sent: list[set[str]] = []
    w.publish = lambda keys: sent.append(set(keys))
    w.work_queued("fn-1")  # nobody seen: a cold start
    assert sent == [{"fn:fn-1", "scheduler"}]
    assert w.scheduler.is_set()
    w.scheduler.clear()
    w.worker_seen("fn-1")  # its worker exchanged here, then parked on another replica
    now[0] += 1.0
    w.work_queued("fn-1")
    assert sent[-1] == {"fn:fn-1"}
    assert not w.scheduler.is_set()
    now[0] += 5.0  # no worker seen since: it may be gone
    w.work_queued("fn-1")
    assert sent[-1] == {"fn:fn-1", "scheduler"}
    assert w.scheduler.is_set()


def test_one_process_kicks_its_scheduler_when_no_worker_waits() -> None:
    w = Wakeups(now_s=lambda: 0.0)
    w.worker_seen("fn-1")  # alive but busy: no replica to hand it to, the scheduler looks
    w.work_queued("fn-1")
    assert w.scheduler.is_set()
