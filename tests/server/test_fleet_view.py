"""The scheduler's in-memory view of hosts and live containers (issue 15 item 3): a quiet
tick reads only what changed, yet a change made through another replica (a host drained, a
container ended by its agent, a pod created) is seen by the next tick, and a leader deposed
and elected again reads the whole fleet afresh. Two in-process servers on one store, SQLite
and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select, update

from crucible.protocol.accounts import Scope
from crucible.server.auth import container_token
from crucible.server.leadership import Deposed, claim
from crucible.server.scheduler.fleet_view import CONTAINER_COLUMNS, FleetView, HostUse
from crucible.server.scheduler.loop import SchedulerLoop
from crucible.server.store.tables import containers, hosts

from server_testlib import MakeServer, ServerUnderTest


def _gpus(n: int) -> list[dict[str, Any]]:
    return [
        {"index": i, "model": "H100", "memory_mib": 81920, "uuid": f"GPU-{i}", "fake": True}
        for i in range(n)
    ]


def _live(server: ServerUnderTest) -> list[Any]:
    with server.state.engine.connect() as conn:
        return list(
            conn.execute(
                select(containers.c.id, containers.c.host_id, containers.c.state).where(
                    containers.c.state.in_(("pending", "starting", "running", "stopping"))
                )
            ).all()
        )


def _start(server: ServerUnderTest, host_id: str, host_token: str) -> list[str]:
    """The host's agent takes what it was told to start and reports it running."""
    sync = f"/v1/hosts/{host_id}/sync"
    started = server.ok("POST", sync, token=host_token, json={"containers": [], "wait_s": 0})
    ids = [s["container_id"] for s in started["start"]]
    running = [{"container_id": c, "state": "running"} for c in ids]
    server.ok("POST", sync, token=host_token, json={"containers": running, "wait_s": 0})
    return ids


def test_a_quiet_tick_reads_no_host_and_no_container_row(make_server: MakeServer) -> None:
    server = make_server()
    host_token = server.tenant("hoster", Scope.HOST).token
    renter = server.tenant("renter").token
    host_ids = [server.register_host(host_token, f"box{i}", gpus=_gpus(2)) for i in range(3)]
    for i in range(4):
        server.ok("POST", "/v1/pods", token=renter, json={"name": f"p{i}", "gpu": "H100:1"})
    loop = SchedulerLoop(server.state)
    loop.tick()
    assert loop.fleet.read_rows == (3, 0)  # the first tick reads the whole fleet
    running = {h: _start(server, h, host_token) for h in host_ids}
    loop.tick()
    assert loop.fleet.read_rows[1] == 4  # the four containers the agents reported running
    loop.tick()
    assert loop.fleet.read_rows == (0, 0)
    assert len(loop.fleet.live) == 4 and set(loop.fleet.hosts) == set(host_ids)
    # The heartbeats of syncs that report nothing new are not a change placement reads.
    for h, ids in running.items():
        report = [{"container_id": c, "state": "running"} for c in ids]
        server.ok("POST", f"/v1/hosts/{h}/sync", token=host_token, json={"containers": report})
    loop.tick()
    assert loop.fleet.read_rows == (0, 0)


def test_a_host_drained_through_another_replica_takes_no_new_pod(make_server: MakeServer) -> None:
    leader, replica = make_server(), make_server()
    owner = leader.tenant("hoster")
    host_token = leader.tenant("hoster", Scope.HOST).token
    renter = leader.tenant("renter").token
    first = leader.register_host(host_token, "first", gpus=_gpus(1))
    second = leader.register_host(host_token, "second", gpus=_gpus(1))
    loop = SchedulerLoop(leader.state)
    loop.tick()
    loop.tick()
    replica.ok("PATCH", f"/v1/hosts/{first}/profile", token=owner.token, json={"draining": True})
    replica.ok("POST", "/v1/pods", token=renter, json={"name": "a", "gpu": "H100:1"})
    loop.tick()
    assert loop.fleet.read_rows[0] == 1  # the drained host, alone
    assert [r.host_id for r in _live(leader)] == [second]
    # Drained no longer: the next pod goes to the first host, the only GPU left.
    replica.ok("PATCH", f"/v1/hosts/{first}/profile", token=owner.token, json={"draining": False})
    replica.ok("POST", "/v1/pods", token=renter, json={"name": "b", "gpu": "H100:1"})
    loop.tick()
    assert sorted(r.host_id for r in _live(leader)) == sorted([first, second])


def test_a_container_ended_by_its_agent_through_another_replica_frees_its_gpu(
    make_server: MakeServer,
) -> None:
    """The one GPU is held by a running pod; the pod is stopped and its agent reports the
    container ended through the other replica: the leader's next tick places the waiting pod
    on that GPU (and not before)."""
    leader, replica = make_server(), make_server()
    host_token = leader.tenant("hoster", Scope.HOST).token
    renter = leader.tenant("renter").token
    host_id = leader.register_host(host_token, "box", gpus=_gpus(1))
    loop = SchedulerLoop(leader.state)
    replica.ok("POST", "/v1/pods", token=renter, json={"name": "a", "gpu": "H100:1"})
    loop.tick()
    [first] = _start(replica, host_id, host_token)
    loop.tick()
    replica.ok("POST", "/v1/pods/a/stop", token=renter)
    replica.ok("POST", "/v1/pods", token=renter, json={"name": "b", "gpu": "H100:1"})
    loop.tick()
    loop.tick()
    assert [r.id for r in _live(leader)] == [first]
    exited = {"container_id": first, "state": "exited", "exit_code": 0}
    sync = f"/v1/hosts/{host_id}/sync"
    replica.ok("POST", sync, token=host_token, json={"containers": [exited], "wait_s": 0})
    loop.tick()
    assert first not in loop.fleet.live
    [placed] = _live(leader)
    assert placed.id != first and placed.host_id == host_id


def test_a_pod_created_through_another_replica_is_placed_by_the_next_tick(
    make_server: MakeServer,
) -> None:
    leader, replica = make_server(), make_server()
    host_token = leader.tenant("hoster", Scope.HOST).token
    renter = leader.tenant("renter").token
    host_id = replica.register_host(host_token, "box", gpus=_gpus(1))
    loop = SchedulerLoop(leader.state)
    loop.tick()
    assert set(loop.fleet.hosts) == {host_id}
    replica.ok("POST", "/v1/pods", token=renter, json={"name": "a", "gpu": "H100:1"})
    loop.tick()
    [placed] = _live(leader)
    assert placed.host_id == host_id
    loop.tick()
    assert set(loop.fleet.live) == {placed.id}


def test_a_deposed_then_reelected_leader_reads_the_whole_fleet_again(
    make_server: MakeServer,
) -> None:
    server = make_server()
    host_token = server.tenant("hoster", Scope.HOST).token
    renter = server.tenant("renter").token
    host_ids = [server.register_host(host_token, f"box{i}", gpus=_gpus(1)) for i in range(2)]
    engine = server.state.engine
    with engine.begin() as conn:
        epoch = claim(conn, "me", 0, 1_000)
    assert epoch is not None
    loop = SchedulerLoop(server.state)
    loop.epoch = epoch
    loop.tick()
    loop.tick()
    assert loop.fleet.read_rows == (0, 0)
    # Another replica takes over (this one's lease lapsed) and drains a host meanwhile.
    with engine.begin() as conn:
        assert claim(conn, "other", 10_000, 1_000) == epoch + 1
        conn.execute(update(hosts).where(hosts.c.id == host_ids[0]).values(draining=True))
    server.ok("POST", "/v1/pods", token=renter, json={"name": "a", "gpu": "H100:1"})
    with pytest.raises(Deposed):
        loop.tick()
    assert _live(server) == []  # the deposed tick committed nothing
    # Elected again: the loop starts under its new epoch and reads everything afresh.
    with engine.begin() as conn:
        again = claim(conn, "me", 20_000, 1_000)
    assert again == epoch + 2

    async def lead() -> None:
        loop.start(again)
        await loop.stop()

    asyncio.run(lead())
    loop.tick()
    assert loop.fleet.read_rows == (2, 0)
    assert [r.host_id for r in _live(server)] == [host_ids[1]]


def test_an_app_stopped_through_another_replica_gets_no_new_container(
    make_server: MakeServer,
) -> None:
    """The view keeps the rows of the functions it plans (their app's state among them): an
    app stopped through another replica gets no replacement for its warm container."""
    leader, replica = make_server(), make_server()
    host_token = leader.tenant("hoster", Scope.HOST).token
    renter = leader.tenant("renter").token
    host_id = leader.register_host(host_token, "box")
    app = leader.new_app(renter)
    fn = leader.new_function(renter, app, leader.put_blob(renter), min_containers=1)
    loop = SchedulerLoop(leader.state)
    loop.tick()
    [first] = _start(leader, host_id, host_token)
    loop.tick()
    loop.tick()
    replica.ok("POST", f"/v1/apps/{app}/stop", token=renter)
    loop.tick()
    loop.tick()
    with leader.state.engine.connect() as conn:
        made = conn.execute(select(containers.c.id).where(containers.c.function_id == fn)).all()
    assert [r.id for r in made] == [first]


def test_a_warm_function_made_through_another_replica_gets_its_container(
    make_server: MakeServer,
) -> None:
    """Functions that keep warm containers are followed by the view too: one registered
    through another replica after the leader built its view is started by the next tick."""
    leader, replica = make_server(), make_server()
    host_token = leader.tenant("hoster", Scope.HOST).token
    renter = leader.tenant("renter").token
    host_id = leader.register_host(host_token, "box")
    loop = SchedulerLoop(leader.state)
    loop.tick()
    app = replica.new_app(renter)
    fn = replica.new_function(renter, app, replica.put_blob(renter), min_containers=1)
    assert fn not in loop.fleet.warm  # made after the view's last read
    loop.tick()
    assert fn in loop.fleet.warm
    with leader.state.engine.connect() as conn:
        made = conn.execute(
            select(containers.c.host_id).where(containers.c.function_id == fn)
        ).all()
    assert [r.host_id for r in made] == [host_id]


def _derived(view: FleetView) -> dict[str, Any]:
    """What the view derives from its live containers, in plain values."""

    def uses(by_host: dict[str, HostUse]) -> dict[str, Any]:
        return {h: (u.milli_cpu, u.memory_mib, dict(u.gpus)) for h, u in by_host.items()}

    return {
        "held": uses(view.held),
        "freeing": uses(view.freeing),
        "by_function": {f: set(g) for f, g in view.by_function.items()},
        "lease_ids": set(view.lease_ids),
    }


def _fresh(server: ServerUnderTest, view: FleetView | None = None) -> FleetView:
    """``view`` brought up to the store's state now (a new one: read whole)."""
    view = view or FleetView()
    engine = server.state.engine
    barrier = view.barrier(engine)
    with engine.begin() as conn:
        view.refresh(conn, server.state.market, server.state.clock.now_ms(), barrier)
    return view


def test_what_the_view_derives_follows_each_change_as_a_whole_read_would(
    make_server: MakeServer,
) -> None:
    """Per host use, what stopping containers free, each function's containers and the open
    GPU leases are kept as rows change (a quiet tick passes over no container): after pods
    are placed, started, stopped and ended, and a host is lost, they equal what a whole read
    of the store derives. Each container's start time is observed once, a rebuild included."""
    server = make_server()
    host_token = server.tenant("hoster", Scope.HOST).token
    renter = server.tenant("renter").token
    host_ids = [server.register_host(host_token, f"box{i}", gpus=_gpus(2)) for i in range(3)]
    starts: list[str] = []
    observe = server.state.observations.observe_start
    server.state.observations.observe_start = lambda fid, ms: (  # type: ignore[method-assign]
        starts.append(fid),
        observe(fid, ms),
    )[1]
    loop = SchedulerLoop(server.state)

    def check() -> None:
        loop.tick()  # what it placed or stopped, its view sees at the next refresh
        assert _derived(_fresh(server, loop.fleet)) == _derived(_fresh(server))

    for i in range(5):
        server.ok("POST", "/v1/pods", token=renter, json={"name": f"p{i}", "gpu": "H100:1"})
    server.ok("POST", "/v1/pods", token=renter, json={"name": "cpu", "cpu": 0.3})
    check()
    assert len(loop.fleet.lease_ids) == 5 and len(loop.fleet.by_function) == 6
    # A function that keeps two warm containers, whose workers come up (ready).
    app = server.new_app(renter)
    fn = server.new_function(renter, app, server.put_blob(renter), min_containers=2)
    check()
    for h in host_ids:
        _start(server, h, host_token)
    for r in _live(server):
        if r.id in loop.fleet.live and loop.fleet.live[r.id].function_id == fn:
            ctok = container_token(server.state.secret, r.id)
            server.ok("POST", f"/v1/containers/{r.id}/exchange", token=ctok, json={"want": 0})
    check()
    assert loop.fleet.freeing == {}
    assert starts == [fn, fn]  # each container's start once
    loop.fleet.invalidate()  # the next tick reads the whole fleet again
    check()
    assert starts == [fn, fn]
    server.ok("POST", "/v1/pods/p0/stop", token=renter)
    server.ok("POST", "/v1/pods/cpu/stop", token=renter)
    check()
    assert sum(len(u.gpus) for u in loop.fleet.freeing.values()) == 1
    # The agents report the stopped containers ended (and the others still running).
    for h in host_ids:
        report = [
            {"container_id": r.id, "state": "exited", "exit_code": 0}
            if r.state == "stopping"
            else {"container_id": r.id, "state": "running"}
            for r in _live(server)
            if r.host_id == h
        ]
        server.ok("POST", f"/v1/hosts/{h}/sync", token=host_token, json={"containers": report})
    check()
    assert loop.fleet.freeing == {} and len(loop.fleet.lease_ids) == 4
    # A host lost: its containers end with it.
    with server.state.engine.begin() as conn:
        conn.execute(update(hosts).where(hosts.c.id == host_ids[0]).values(state="lost"))
        conn.execute(
            update(containers)
            .where(containers.c.host_id == host_ids[0], containers.c.state == "running")
            .values(state="lost")
        )
    check()
    loop.fleet.invalidate()
    check()


def test_a_hosts_use_counts_each_container_at_no_less_than_it_asked_and_returns_to_nothing() -> (
    None
):
    """CPU is kept in thousandths of a core: a tenth three times is 0.3 exactly, a sliver
    counts as a whole thousandth (never less than asked), and taking every container back
    leaves nothing behind, whatever the order."""
    columns = list(CONTAINER_COLUMNS.selected_columns.keys())

    def row(cpu: float, gpus: str | None = None) -> tuple[Any, ...]:
        values = {"cpu": cpu, "memory_mib": 512, "gpu_indices_text": gpus}
        return tuple(values.get(c) for c in columns)

    rows = [row(0.1), row(0.1), row(0.1, "[0]"), row(0.0004, "[0, 1]")]
    use = HostUse()
    for r in rows:
        use.add(r, 1)
    assert (use.milli_cpu, use.memory_mib, dict(use.gpus)) == (301, 2048, {0: 2, 1: 1})
    for r in reversed(rows):
        use.add(r, -1)
    assert use.empty and use.cpu == 0.0
