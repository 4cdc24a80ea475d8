"""Per-process caches that must stay right when an agent's requests land on several replicas
(two in-process servers on one store: SQLite and PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update

from crucible.protocol.accounts import Scope
from crucible.server.scheduler.loop import SchedulerLoop
from crucible.server.store.tables import containers

from server_testlib import MakeServer, ServerUnderTest


def test_an_agent_restarted_through_another_replica_is_not_taken_for_a_stale_one(
    make_server: MakeServer,
) -> None:
    """Replica B saw the old agent process's syncs up to seq 50. The agent restarts and
    registers through replica A; its first sync (seq 1) reaches B, which must apply it: the
    container the new process does not run is gone. (B used to keep the old process's seq
    and ignore the new one's reports until they passed 50.)"""
    a, b = make_server(), make_server()
    host_token = a.tenant("hoster", Scope.HOST).token
    renter = a.tenant("renter").token
    host_id = a.register_host(host_token, "box")
    fn = a.new_function(renter, a.new_app(renter), a.put_blob(renter))
    cid, _ = a.place_container(fn, host_id)
    running = {"containers": [{"container_id": cid, "state": "running"}], "seq": 50}
    b.ok("POST", f"/v1/hosts/{host_id}/sync", token=host_token, json=running)
    with b.state.engine.connect() as conn:
        assert conn.execute(select(containers.c.state).where(containers.c.id == cid)).scalar() in (
            "starting",
            "running",
        )
    assert a.register_host(host_token, "box") == host_id  # the agent restarted, via A
    b.ok("POST", f"/v1/hosts/{host_id}/sync", token=host_token, json={"containers": [], "seq": 1})
    with b.state.engine.connect() as conn:
        ct = conn.execute(select(containers).where(containers.c.id == cid)).one()
    assert (ct.state, ct.exit_reason) == ("stopped", "lost")


def test_the_autoscalers_observations_reach_the_other_replicas(make_server: MakeServer) -> None:
    """Arrivals and execution times observed on one replica are the leader's inputs too (a
    loopback stands in for the PostgreSQL bus, tested in tests/replicas/)."""
    a, b = make_server(), make_server()
    a.state.wakeups.publish = b.state.wakeups.notify_local
    now = a.state.clock.now_ms()
    a.state.observations.observe_arrivals("fn-1", 5, now)
    a.state.observations.observe_exec("fn-1", [10.0, 30.0])
    assert "fn-1" in b.state.observations.arrivals
    assert b.state.observations.exec_stats["fn-1"] == 20.0
    # Nothing is shared in one process: no publisher, nothing formatted.
    b.state.observations.observe_arrivals("fn-2", 1, now)
    assert "fn-2" not in a.state.observations.arrivals


def test_why_work_waits_reaches_the_other_replicas(make_server: MakeServer) -> None:
    """The leader's reasons (shown on queued calls, pods and clusters) as they change."""
    leader, other = make_server(), make_server()
    leader.state.wakeups.publish = other.state.wakeups.notify_local
    loop = SchedulerLoop(leader.state)
    leader.state.leader.waiting = {"fn-1": "no host has\nan H100 free", "fn-2": "busy"}
    loop._share_waiting()
    assert other.state.leader.waiting == {"fn-1": "no host has an H100 free", "fn-2": "busy"}
    leader.state.leader.waiting = {"fn-2": "still busy"}
    loop._share_waiting()
    assert other.state.leader.waiting == {"fn-2": "still busy"}


@dataclass
class _OneHost:
    """Two replicas on one store, a host registered and a function of a renter's to place
    containers of on it; the host's agent syncs through either replica."""

    a: ServerUnderTest
    b: ServerUnderTest
    host_token: str
    host_id: str
    function_id: str

    @classmethod
    def make(cls, make_server: MakeServer) -> _OneHost:
        a, b = make_server(), make_server()
        host_token = a.tenant("hoster", Scope.HOST).token
        renter = a.tenant("renter").token
        host_id = a.register_host(host_token, "box")
        fn = a.new_function(renter, a.new_app(renter), a.put_blob(renter))
        return cls(a, b, host_token, host_id, fn)

    def place(self) -> str:
        return self.a.place_container(self.function_id, self.host_id)[0]

    def sync(self, via: ServerUnderTest, seq: int, **states: str) -> None:
        """A sync numbered ``seq`` reporting containers (id=state), through replica ``via``."""
        reports = [{"container_id": c, "state": st} for c, st in states.items()]
        body = {"containers": reports, "seq": seq}
        via.ok("POST", f"/v1/hosts/{self.host_id}/sync", token=self.host_token, json=body)

    def state(self, container_id: str) -> tuple[str, str | None]:
        with self.a.state.engine.connect() as conn:
            row = conn.execute(
                select(containers.c.state, containers.c.exit_reason).where(
                    containers.c.id == container_id
                )
            ).one()
        return row.state, row.exit_reason


def test_an_older_sync_applied_after_a_newer_one_does_not_lose_a_started_container(
    make_server: MakeServer,
) -> None:
    """An agent's loop and its exit reporter sync at once: the reporter's snapshot (seq 5,
    taken before the container started) can be applied after the loop's (seq 6, which
    reported it starting), on another replica or on this one while both were in flight. It
    must not end the container as lost: that gave its GPU to another account's older call
    while the container's own call went back to the queue (a CI failure of
    tests/e2e/test_idle_yield_e2e.py). A later sync that does not report it still does."""
    one = _OneHost.make(make_server)
    cid = one.place()
    one.sync(one.a, 6, **{cid: "starting"})
    assert one.state(cid) == ("starting", None)
    # B has seen none of this agent's syncs: by its memory alone the older one is fresh.
    one.sync(one.b, 5)
    assert one.state(cid) == ("starting", None)
    # The same through A, whose memory says stale: the store agrees.
    one.sync(one.a, 4)
    assert one.state(cid) == ("starting", None)
    one.sync(one.b, 7)
    assert one.state(cid) == ("stopped", "lost")


def test_syncs_of_a_restarted_agent_come_after_the_old_ones() -> None:
    from crucible.server.services.hosts import sync_mark

    assert sync_mark(2, 1) > sync_mark(1, 10**6) > sync_mark(1, 5)
    assert sync_mark(1, 2**53) < sync_mark(2, 1)  # a huge number stays in its session


def test_a_container_whose_worker_came_first_is_not_lost_to_an_older_sync(
    make_server: MakeServer,
) -> None:
    """The worker can reach the server before its agent reports the start (pending → running
    without any sync). A sync taken before the start and applied after it leaves the
    container alone for a grace; once a sync reported it, only a later sync ends it; a
    container no sync ever reported is ended once the grace has passed."""
    one = _OneHost.make(make_server)
    cid, old = one.place(), one.place()

    def ready(container_id: str, started_ms: int) -> None:  # as the worker's first request
        with one.a.state.engine.begin() as conn:
            conn.execute(
                update(containers)
                .where(containers.c.id == container_id)
                .values(state="running", started_ms=started_ms, ready_ms=started_ms)
            )

    now = one.a.state.clock.now_ms()
    ready(cid, now)
    ready(old, now - 60_000)  # a minute ago, and never reported since
    one.sync(one.b, 5)
    assert one.state(cid) == ("running", None)
    assert one.state(old) == ("stopped", "lost")
    one.sync(one.a, 6, **{cid: "running"})
    one.sync(one.b, 6)  # no later
    assert one.state(cid) == ("running", None)
    one.sync(one.b, 7)
    assert one.state(cid) == ("stopped", "lost")
