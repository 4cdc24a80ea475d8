"""What keeps agent syncs cheap with thousands of hosts (issue 15, item 3), in-process on
SQLite and PostgreSQL with the clock injected: an idle sync writes nothing (its heartbeat is
written with other hosts' in one statement, at most a second later, or by the scheduler's
next tick), a lost host that syncs is ready again at once, a re-registered host is listed
with its new inventory, and a wake-up sent from a worker thread wakes the event loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from sqlalchemy import event, select

from crucible.protocol.accounts import Scope
from crucible.server.heartbeats import Heartbeats
from crucible.server.scheduler.loop import SchedulerLoop
from crucible.server.store.db import connection_at_hand
from crucible.server.store.tables import apps, hosts, pods
from crucible.server.wakeups import Wakeups

from server_testlib import MakeServer, ManualClock, ServerUnderTest

T0 = 1_800_000_000_000


def _stored_seen(server: ServerUnderTest, host_id: str) -> tuple[int, str]:
    with server.state.engine.connect() as conn:
        row = conn.execute(
            select(hosts.c.last_seen_ms, hosts.c.state).where(hosts.c.id == host_id)
        ).one()
    return int(row.last_seen_ms), str(row.state)


class Writes:
    """Statements that write, seen by the store's engine while the block runs."""

    def __init__(self, server: ServerUnderTest) -> None:
        self.engine = server.state.engine
        self.statements: list[str] = []

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            self.statements.append(statement)

    def __enter__(self) -> Writes:
        event.listen(self.engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)


def test_idle_syncs_write_nothing_and_their_heartbeats_land_in_one_batch(
    make_server: MakeServer,
) -> None:
    server = make_server()
    clock = ManualClock(T0)
    server.state.clock = clock
    token = server.tenant("hoster", Scope.HOST).token
    a = server.register_host(token, "box-a")
    b = server.register_host(token, "box-b")

    def sync(host_id: str) -> None:
        reply = server.ok(
            "POST", f"/v1/hosts/{host_id}/sync", token=token, json={"containers": [], "wait_s": 0}
        )
        assert reply["start"] == [] and reply["stop"] == []

    with Writes(server) as writes:
        for step in (100, 200, 300):
            clock.now = T0 + step
            sync(a)
            sync(b)
    assert writes.statements == []  # was one UPDATE of hosts per sync
    assert _stored_seen(server, a) == (T0, "ready")  # as registered
    # A second after the oldest unwritten heartbeat, the next sync writes them all at once.
    clock.now = T0 + 1_100
    with Writes(server) as writes:
        sync(a)
    assert len(writes.statements) == 1
    assert _stored_seen(server, a) == (T0 + 1_100, "ready")
    assert _stored_seen(server, b) == (T0 + 300, "ready")
    # The scheduler's tick writes what is left before it looks for silent hosts.
    clock.now = T0 + 1_200
    sync(b)
    SchedulerLoop(server.state).tick()
    assert _stored_seen(server, b) == (T0 + 1_200, "ready")
    assert len(server.state.hosts.heartbeats) == 0


def test_a_lost_host_that_syncs_is_ready_again_at_once(make_server: MakeServer) -> None:
    server = make_server(host_timeout_s=15)
    clock = ManualClock(T0)
    server.state.clock = clock
    token = server.tenant("hoster", Scope.HOST).token
    host_id = server.register_host(token, "box")
    loop = SchedulerLoop(server.state)
    loop.tick()  # the scheduler runs from T0: the host's silence counts
    clock.now = T0 + 20_000
    loop.tick()
    assert _stored_seen(server, host_id) == (T0, "lost")
    server.ok("POST", f"/v1/hosts/{host_id}/sync", token=token, json={"wait_s": 0})
    assert _stored_seen(server, host_id) == (T0 + 20_000, "ready")  # not a second later
    [listed] = server.ok("GET", "/v1/hosts", token=token)
    assert listed["state"] == "ready"


def test_a_host_registered_again_is_listed_with_its_new_inventory(
    server: ServerUnderTest,
) -> None:
    token = server.tenant("hoster", Scope.HOST).token
    server.register_host(token, "box", cpu_cores=8)
    assert [h["inventory"]["cpu_cores"] for h in server.ok("GET", "/v1/hosts", token=token)] == [8]
    server.register_host(token, "box", cpu_cores=32)  # inventories are cached per session
    assert [h["inventory"]["cpu_cores"] for h in server.ok("GET", "/v1/hosts", token=token)] == [32]


def test_a_sync_of_an_unknown_or_foreign_host_is_not_found(server: ServerUnderTest) -> None:
    mine = server.tenant("hoster", Scope.HOST).token
    theirs = server.tenant("other", Scope.HOST).token
    host_id = server.register_host(mine, "box")
    for token, path in ((theirs, host_id), (mine, "ho-nope")):
        r = server.request("POST", f"/v1/hosts/{path}/sync", token=token, json={"wait_s": 0})
        assert r.status_code == 404, r.text
        assert "register again" in r.json()["error"]["message"]
    user = server.tenant("renter").token
    r = server.request("POST", f"/v1/hosts/{host_id}/sync", token=user, json={"wait_s": 0})
    assert r.status_code == 403, r.text


def test_heartbeats_keep_the_newest_and_survive_a_failed_write() -> None:
    book = Heartbeats(flush_every_ms=1_000)
    book.seen("h1", 5_000)
    book.seen("h1", 4_000)  # an older sync answered late changes nothing
    assert not book.due(5_999) and book.due(6_000)
    taken = book.take()
    assert taken == {"h1": 5_000} and len(book) == 0 and not book.due(10_000)
    book.seen("h1", 7_000)
    book.give_back(taken)  # its write rolled back; a newer heartbeat came meanwhile
    assert book.take() == {"h1": 7_000}


def test_a_wake_up_from_a_worker_thread_wakes_the_loop() -> None:
    """A route declared ``def`` runs in a worker thread; its kick must wake the scheduler
    (and its notifications their long polls) now, not at the loop's next turn."""

    async def main() -> tuple[bool, bool]:
        wakeups = Wakeups()
        wakeups.bind(asyncio.get_running_loop())
        with wakeups.listen("host:h1") as woken:
            threading.Thread(target=wakeups.kick_scheduler).start()
            # Nothing else runs on this loop: before the fix it slept out the whole wait.
            await asyncio.wait_for(wakeups.scheduler.wait(), timeout=30)
            threading.Thread(target=wakeups.notify_many, args=(["host:h1"],)).start()
            await asyncio.wait_for(woken.wait(), timeout=30)
            return wakeups.scheduler.is_set(), woken.is_set()

    assert asyncio.run(main()) == (True, True)


def test_a_pods_runs_settle_through_ticks_and_syncs(make_server: MakeServer) -> None:
    """The scheduler settles only the pods it has something to do for (found by the store):
    a pod placed, running, exited, started again and stopped still ends each run right."""
    server = make_server()
    host_token = server.tenant("hoster", Scope.HOST).token
    renter = server.tenant("renter").token
    gpus = [
        {"index": i, "model": "H100", "memory_mib": 81920, "uuid": f"GPU-{i}", "fake": True}
        for i in range(2)
    ]
    clock = ManualClock(T0)
    server.state.clock = clock
    host_id = server.register_host(host_token, "box", gpus=gpus)
    loop = SchedulerLoop(server.state)

    def sync(*reports: dict[str, Any]) -> dict[str, Any]:
        body = {"containers": list(reports), "wait_s": 0}
        reply: dict[str, Any] = server.ok(
            "POST", f"/v1/hosts/{host_id}/sync", token=host_token, json=body
        )
        return reply

    def pod() -> dict[str, Any]:
        shown: dict[str, Any] = server.ok("GET", "/v1/pods/box", token=renter)
        return shown

    server.ok("POST", "/v1/pods", token=renter, json={"name": "box", "gpu": "H100:1"})
    loop.tick()
    [start] = sync()["start"]
    assert start["pod"]["name"] == "box" and pod()["host_id"] == host_id
    first = start["container_id"]
    running = {"container_id": first, "state": "running"}
    assert sync(running)["start"] == []
    loop.tick()
    loop.tick()
    assert pod()["state"] == "starting" and pod()["container_id"] == first  # its worker is not up
    sync({"container_id": first, "state": "exited", "exit_code": 0, "reason": "exited"})
    # Settled by the sync that ended its container, before any tick: a tick reading the pod's
    # function in between would otherwise start a second container for the ended run.
    with server.state.engine.connect() as conn:
        settled = conn.execute(
            select(pods.c.state, apps.c.state.label("app"))
            .join(apps, apps.c.id == pods.c.app_id)
            .where(pods.c.name == "box")
        ).one()
    assert (settled.state, settled.app) == ("stopped", "stopped")
    loop.tick()
    assert (pod()["state"], pod()["reason"]) == ("stopped", "its command exited with status 0")
    loop.tick()
    assert sync()["start"] == []  # nothing restarts a pod whose run ended
    clock.now += 1_000
    assert server.ok("POST", "/v1/pods/box/start", token=renter)["state"] == "pending"
    clock.now += 60_000  # past the crash-loop backoff (its run ended before it was ready)
    sync()
    loop.tick()
    [again] = sync()["start"]
    second = again["container_id"]
    assert second != first
    sync({"container_id": second, "state": "running"})
    loop.tick()
    assert server.ok("POST", "/v1/pods/box/stop", token=renter)["state"] == "stopping"
    assert sync({"container_id": second, "state": "running"})["stop"] == [second]
    sync({"container_id": second, "state": "exited", "exit_code": 143, "reason": "stopped"})
    loop.tick()
    assert (pod()["state"], pod()["reason"]) == ("stopped", "stopped by you")


def _sync_in_background(
    server: ServerUnderTest, host_id: str, host_token: str, *, wait_s: float
) -> asyncio.Future[Any]:
    """An idle host's sync, sent on the server's loop; the caller awaits its response."""
    return asyncio.ensure_future(
        server._client.post(
            f"/v1/hosts/{host_id}/sync",
            json={"containers": [], "wait_s": wait_s},
            headers={"authorization": f"Bearer {host_token}"},
        )
    )


def test_a_waiting_sync_is_answered_with_work_placed_while_it_waits(
    server: ServerUnderTest,
) -> None:
    host_token = server.tenant("hoster", Scope.HOST).token
    renter = server.tenant("renter").token
    host_id = server.register_host(host_token, "box")
    fn = server.new_function(renter, server.new_app(renter), server.put_blob(renter))
    placed: list[str] = []

    async def scenario() -> Any:
        waiting = _sync_in_background(server, host_id, host_token, wait_s=30)
        await asyncio.sleep(0.2)  # it has read the store (nothing) and waits
        cid, _ = server.place_container(fn, host_id)
        placed.append(cid)
        server.state.wakeups.notify_many([f"host:{host_id}"])
        return await asyncio.wait_for(waiting, timeout=25)

    r = server._loop.run_until_complete(scenario())
    assert r.status_code == 200, r.text
    assert [a["container_id"] for a in r.json()["start"]] == placed


def test_a_sync_or_health_check_that_finds_the_pool_in_use_waits_off_the_event_loop(
    server: ServerUnderTest,
) -> None:
    """On SQLite an idle sync is read on the event loop, but only with a connection at hand:
    waiting there for one would hold up every other request until a thread gave one back.
    The health check reads the store in a thread for the same reason."""
    engine = server.state.engine
    if engine.dialect.name != "sqlite":
        pytest.skip("on PostgreSQL every sync reads in a thread (and its pool overflows)")
    host_token = server.tenant("hoster", Scope.HOST).token
    host_id = server.register_host(host_token, "box")
    held = []
    while connection_at_hand(engine):  # other work holds every connection the pool has
        held.append(engine.connect())

    async def scenario() -> Any:
        sync = _sync_in_background(server, host_id, host_token, wait_s=0)
        health = asyncio.ensure_future(server._client.get("/healthz"))
        # Were either waiting on the loop, this coroutine would not run again until the
        # pool's timeout, and they would have failed by then.
        await asyncio.sleep(0.3)
        assert not sync.done() and not health.done()
        for conn in held:  # the other work ends
            conn.close()
        return await asyncio.wait_for(asyncio.gather(sync, health), timeout=25)

    try:
        synced, healthy = server._loop.run_until_complete(scenario())
    finally:
        for conn in held:
            conn.close()
    assert synced.status_code == 200, synced.text
    assert synced.json()["start"] == []
    assert healthy.json() == {"status": "ok"}


def test_an_exchange_back_from_an_outage_waits_for_its_hosts(make_server: MakeServer) -> None:
    """A server down (or cut off from its store) longer than the host timeout marked every
    host lost at its first tick back, ending their containers and calls, though the agents
    had been retrying all along: they could not reach it. Silence counts from when the
    scheduler has the store."""
    server = make_server(host_timeout_s=15)
    clock = ManualClock(T0)
    server.state.clock = clock
    token = server.tenant("hoster", Scope.HOST).token
    host_id = server.register_host(token, "box")
    clock.now = T0 + 60_000  # the server was away for a minute
    loop = SchedulerLoop(server.state)  # a restart
    loop.tick()
    clock.now += 10_000
    loop.tick()
    assert _stored_seen(server, host_id) == (T0, "ready")
    server.ok("POST", f"/v1/hosts/{host_id}/sync", token=token, json={"wait_s": 0})
    clock.now += 14_000
    loop.tick()
    assert _stored_seen(server, host_id)[1] == "ready"
    # A host that stays silent for the timeout after the exchange is back is lost.
    clock.now += 16_000
    loop.tick()
    assert _stored_seen(server, host_id)[1] == "lost"

    # The same after the store was away: a failed tick starts the count again.
    server.ok("POST", f"/v1/hosts/{host_id}/sync", token=token, json={"wait_s": 0})
    real = loop._tick

    def away() -> list[str]:
        raise OSError("the store is away")

    loop._tick = away  # type: ignore[method-assign]
    with pytest.raises(OSError):
        loop.tick()
    loop._tick = real  # type: ignore[method-assign]
    clock.now += 60_000
    loop.tick()
    assert _stored_seen(server, host_id)[1] == "ready"
