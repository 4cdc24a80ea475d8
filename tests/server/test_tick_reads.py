"""What a scheduler tick reads (issue 15, items 2 and 3): a function's spec is parsed once per
version and a host's inventory once per registration, yet a change made through any replica
(two in-process servers on one store: SQLite and PostgreSQL) is seen by the next placement."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, select, update

from crucible.protocol.accounts import Scope
from crucible.server.scheduler.loop import SchedulerLoop
from crucible.server.services.function_specs import SPECS, SpecCache
from crucible.server.store.tables import calls, containers, functions, hosts, pods

from server_testlib import MakeServer, ManualClock, ServerUnderTest


def _gpus(n: int) -> list[dict[str, Any]]:
    return [
        {"index": i, "model": "H100", "memory_mib": 81920, "uuid": f"GPU-{i}", "fake": True}
        for i in range(n)
    ]


class Statements:
    """SQL statements the store's engine runs while the block runs."""

    def __init__(self, server: ServerUnderTest) -> None:
        self.engine = server.state.engine
        self.seen: list[str] = []

    def _note(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.seen.append(statement)

    def __enter__(self) -> Statements:
        event.listen(self.engine, "before_cursor_execute", self._note)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._note)

    def reading(self, column: str) -> list[str]:
        return [s for s in self.seen if s.lstrip().upper().startswith("SELECT") and column in s]


def test_a_tick_reads_inventories_only_of_hosts_that_registered_again(
    make_server: MakeServer,
) -> None:
    """Tick after tick the hosts' inventories are not read again; a host that re-registers
    through another replica with more GPUs is read once, and the next placement uses them."""
    leader, replica = make_server(), make_server()
    host_token = leader.tenant("hoster", Scope.HOST).token
    renter = leader.tenant("renter").token
    host_id = leader.register_host(host_token, "box", gpus=_gpus(1))
    leader.register_host(host_token, "other", gpus=_gpus(1))
    loop = SchedulerLoop(leader.state)
    loop.tick()
    with Statements(leader) as quiet:
        loop.tick()
    assert quiet.reading("inventory") == []
    # The agent restarts with two GPUs and registers through the other replica.
    assert replica.register_host(host_token, "box", gpus=_gpus(2)) == host_id
    leader.ok("POST", "/v1/pods", token=renter, json={"name": "pair", "gpu": "H100:2"})
    with Statements(leader) as after:
        loop.tick()
    assert len(after.reading("inventory")) == 1  # that host's, once
    with leader.state.engine.connect() as conn:
        placed = conn.execute(
            select(containers.c.host_id, containers.c.gpu_indices).where(
                containers.c.state == "pending"
            )
        ).one()
    assert placed.host_id == host_id and sorted(placed.gpu_indices) == [0, 1]


def test_a_function_redefined_through_another_replica_is_placed_with_its_new_spec(
    make_server: MakeServer,
) -> None:
    """The leader parsed version 1 of a warm function; another replica registers the name
    again with other resources and more warm containers. The leader's next tick starts a
    container of version 2 (its CPU, its memory), not of the version it had cached, and the
    agent's assignment carries version 2's settings."""
    leader, replica = make_server(), make_server()
    host_token = leader.tenant("hoster", Scope.HOST).token
    renter = leader.tenant("renter").token
    host_id = leader.register_host(host_token, "box")
    app = leader.new_app(renter)
    blob = leader.put_blob(renter)
    v1 = {"min_containers": 1, "resources": {"cpu": 1, "memory_mib": 1024}}
    fn = leader.new_function(renter, app, blob, **v1)
    loop = SchedulerLoop(leader.state)
    loop.tick()
    v2 = {"min_containers": 2, "resources": {"cpu": 2, "memory_mib": 2048}, "max_inputs": 3}
    assert replica.new_function(renter, app, blob, **v2) == fn
    with leader.state.engine.connect() as conn:
        assert conn.execute(select(functions.c.spec_rev).where(functions.c.id == fn)).scalar() == 2
    loop.tick()
    with leader.state.engine.connect() as conn:
        made = conn.execute(
            select(containers.c.cpu, containers.c.memory_mib).where(containers.c.function_id == fn)
        ).all()
    assert sorted((r.cpu, r.memory_mib) for r in made) == [(1.0, 1024), (2.0, 2048)]
    reply = leader.ok(
        "POST", f"/v1/hosts/{host_id}/sync", token=host_token, json={"containers": []}
    )
    assert {s["max_inputs"] for s in reply["start"]} == {3}  # both start as version 2 now


def test_specs_are_parsed_once_per_version(make_server: MakeServer) -> None:
    """Ticks over the same work parse no spec again; a new version is parsed once."""
    server = make_server()
    server.register_host(server.tenant("hoster", Scope.HOST).token, "box")
    renter = server.tenant("renter").token
    app, blob = server.new_app(renter), server.put_blob(renter)
    fn = server.new_function(renter, app, blob, min_containers=1)
    loop = SchedulerLoop(server.state)
    loop.tick()
    before = SPECS.parsed
    for _ in range(3):
        loop.tick()
    assert SPECS.parsed == before
    server.new_function(renter, app, blob, min_containers=1, max_inputs=2)
    loop.tick()
    loop.tick()
    assert SPECS.parsed == before + 1
    with server.state.engine.connect() as conn:
        spec = SPECS.get(conn, fn)
        assert spec is not None and (spec.rev, spec.spec.max_inputs) == (2, 2)
        assert SPECS.get(conn, "fn-none") is None


def test_the_spec_cache_keeps_its_bound(make_server: MakeServer) -> None:
    server = make_server()
    renter = server.tenant("renter").token
    app, blob = server.new_app(renter), server.put_blob(renter)
    ids = []
    for name in ("a", "b", "c"):
        body = {"name": name, "code": {"bundle": blob, "module": "m", "qualname": name}}
        made = server.ok(
            "POST", f"/v1/apps/{app}/functions", token=renter, json={"functions": [body]}
        )
        ids.append(made[0]["id"])
    cache = SpecCache(max_entries=2)
    with server.state.engine.connect() as conn:
        got = cache.get_many(conn, dict.fromkeys(ids, 1))
    assert sorted(got) == sorted(ids) and cache.parsed == 3
    assert cache.cached(ids[0], 1) is None  # the least recently used went
    assert cache.cached(ids[2], 1) is not None and cache.cached(ids[2], 2) is None


def _containers(server: ServerUnderTest, fn: str) -> list[tuple[str, str]]:
    with server.state.engine.connect() as conn:
        rows = conn.execute(
            select(containers.c.id, containers.c.state).where(containers.c.function_id == fn)
        ).all()
    return sorted((r.id, r.state) for r in rows)


def test_a_settled_function_is_left_out_until_its_rows_or_its_start_timeout_change(
    make_server: MakeServer,
) -> None:
    """A warm function with the container it wants is left out of later plans; calls
    submitted for it through another replica bring it back at the next tick."""
    leader, replica = make_server(), make_server()
    clock = ManualClock(1_800_000_000_000)
    leader.state.clock = clock
    leader.register_host(leader.tenant("hoster", Scope.HOST).token, "box")
    renter = leader.tenant("renter").token
    fn = leader.new_function(renter, leader.new_app(renter), leader.put_blob(renter))
    warm = leader.new_function(
        renter,
        leader.new_app(renter, "warm"),
        leader.put_blob(renter),
        min_containers=1,
        resources={"cpu": 0.5, "memory_mib": 512},
    )
    loop = SchedulerLoop(leader.state)
    loop.tick()  # starts the warm container
    [(first, _)] = _containers(leader, warm)
    loop.tick()  # nothing to do: settled
    loop.tick()
    assert warm in loop.left_out
    assert _containers(leader, warm) == [(first, "pending")]
    # Work for another function does not bring the settled one back.
    replica.new_calls(renter, fn, 1)
    loop.tick()
    assert warm in loop.left_out and fn not in loop.left_out
    # Calls for it, through the other replica: planned again.
    replica.new_calls(renter, warm, 3)
    loop.tick()
    assert warm not in loop.left_out


def test_a_settled_function_whose_container_or_app_changed_elsewhere_is_planned_again(
    make_server: MakeServer,
) -> None:
    """A settled function is left out without being read while nothing of it changes; a
    change to its container or its app, written by another replica or an agent's report,
    brings it back into the next plan: a container gone is replaced, an app stopped has its
    container stopped."""
    leader, replica = make_server(), make_server()
    leader.register_host(leader.tenant("hoster", Scope.HOST).token, "box")
    renter = leader.tenant("renter").token
    apps = [leader.new_app(renter, f"warm{i}") for i in range(3)]
    fns = [
        leader.new_function(
            renter, a, leader.put_blob(renter), min_containers=1, resources={"cpu": 0.5}
        )
        for a in apps
    ]
    loop = SchedulerLoop(leader.state)
    for _ in range(3):
        loop.tick()
    assert set(fns) <= loop.left_out
    [(gone, _)] = _containers(leader, fns[0])
    with replica.state.engine.begin() as conn:  # another writer: its agent lost it
        conn.execute(update(containers).where(containers.c.id == gone).values(state="lost"))
    replica.ok("POST", f"/v1/apps/{apps[1]}/stop", token=renter)
    loop.tick()
    assert fns[2] in loop.left_out and not {fns[0], fns[1]} & loop.left_out
    assert [s for c, s in _containers(leader, fns[0]) if c != gone] == ["pending"]
    assert [s for _, s in _containers(leader, fns[1])] in (["stopping"], ["stopped"])


def _settled_warm_function(server: ServerUnderTest) -> tuple[SchedulerLoop, ManualClock, str]:
    """A function kept warm whose container never starts, settled by three ticks on a
    manual clock: the loop, the clock, the function."""
    clock = ManualClock(1_800_000_000_000)
    server.state.clock = clock
    server.register_host(server.tenant("hoster", Scope.HOST).token, "box")
    renter = server.tenant("renter").token
    warm = server.new_function(
        renter, server.new_app(renter), server.put_blob(renter), min_containers=1
    )
    loop = SchedulerLoop(server.state)
    for _ in range(3):
        loop.tick()
    assert warm in loop.left_out
    return loop, clock, warm


def test_a_settled_container_that_never_starts_is_still_replaced(
    make_server: MakeServer,
) -> None:
    server = make_server()
    loop, clock, warm = _settled_warm_function(server)
    [(first, _)] = _containers(server, warm)
    clock.now += int(server.state.settings.container_start_timeout_s * 1000) + 1
    loop.tick()
    assert warm not in loop.left_out
    assert dict(_containers(server, warm))[first] in ("stopping", "stopped")


def test_a_settled_container_that_never_starts_is_replaced_between_full_reads(
    make_server: MakeServer,
) -> None:
    """The same with a start timeout shorter than the view's full re-reads: the function
    is settled and nothing of it changes, yet once its container's start timeout is due the
    next tick plans it again and replaces the container."""
    server = make_server(container_start_timeout_s=5)
    loop, clock, warm = _settled_warm_function(server)
    [(first, _)] = _containers(server, warm)
    clock.now += 4_000  # before the timeout: still left out
    loop.tick()
    assert warm in loop.left_out
    clock.now += 1_001
    loop.tick()
    assert warm not in loop.left_out
    assert dict(_containers(server, warm))[first] in ("stopping", "stopped")


def test_a_gpu_held_by_a_stopping_container_is_placed_again_only_once_it_ends(
    make_server: MakeServer,
) -> None:
    """A GPU pod's container told to stop keeps its GPU (the tick's usage and the market's
    lease) until its host reports it ended; then the next tick places the waiting pod there."""
    server = make_server()
    host_token = server.tenant("hoster", Scope.HOST).token
    renter = server.tenant("renter").token
    host_id = server.register_host(host_token, "box", gpus=_gpus(1))
    loop = SchedulerLoop(server.state)
    sync = f"/v1/hosts/{host_id}/sync"
    server.ok("POST", "/v1/pods", token=renter, json={"name": "a", "gpu": "H100:1"})
    loop.tick()
    [first] = server.ok("POST", sync, token=host_token, json={"containers": [], "wait_s": 0})[
        "start"
    ]
    running = {"container_id": first["container_id"], "state": "running"}
    server.ok("POST", sync, token=host_token, json={"containers": [running], "wait_s": 0})
    server.ok("POST", "/v1/pods/a/stop", token=renter)
    server.ok("POST", "/v1/pods", token=renter, json={"name": "b", "gpu": "H100:1"})
    loop.tick()
    loop.tick()
    with server.state.engine.connect() as conn:
        rows = conn.execute(select(containers.c.id, containers.c.state)).all()
    assert [r.state for r in rows if r.id != first["container_id"]] == []
    # The host reports it ended: the next tick places the new pod on that GPU.
    exited = {"container_id": first["container_id"], "state": "exited", "exit_code": 0}
    server.ok("POST", sync, token=host_token, json={"containers": [exited], "wait_s": 0})
    loop.tick()
    with server.state.engine.connect() as conn:
        placed = conn.execute(
            select(containers.c.host_id, containers.c.gpu_indices).where(
                containers.c.id != first["container_id"]
            )
        ).all()
    assert [(p.host_id, list(p.gpu_indices)) for p in placed] == [(host_id, [0])]


def test_a_call_made_while_a_tick_ran_its_chores_is_a_cold_start(make_server: MakeServer) -> None:
    """A call committed after a tick began but before it read the queue: the container the
    tick starts for it is dated no earlier than the call, so the call's timeline counts it a
    cold start (services/timeline.py: a container created after the call began waiting)."""
    server = make_server()
    clock = ManualClock(1_800_000_000_000)
    t0 = clock.now
    server.state.clock = clock
    host_token = server.tenant("hoster", Scope.HOST).token
    renter = server.tenant("renter").token
    server.register_host(host_token, "box")
    fn = server.new_function(renter, server.new_app(renter), server.put_blob(renter))
    loop = SchedulerLoop(server.state)
    loop.tick()
    made: list[str] = []
    barrier = loop.fleet.barrier

    def submit_meanwhile(engine: Any) -> Any:
        # Between the tick's chores and its snapshot, as an API request on another thread.
        clock.now += 5
        made.extend(server.new_calls(renter, fn))
        return barrier(engine)

    loop.fleet.barrier = submit_meanwhile  # type: ignore[method-assign]
    loop.tick()
    [call_id] = made
    with server.state.engine.connect() as conn:
        call_made = conn.execute(select(calls.c.created_ms).where(calls.c.id == call_id)).scalar()
        [started] = conn.execute(
            select(containers.c.created_ms).where(containers.c.function_id == fn)
        ).scalars()
    assert call_made == t0 + 5 and started >= call_made


def test_a_placed_pods_host_is_noted_with_its_container_and_not_settled_again(
    make_server: MakeServer,
) -> None:
    """A pod's disk is where its container runs: the tick that places a pod notes its host in
    the same transaction, so the next tick finds no pod to settle (it wrote nothing, where it
    once read each new pod's latest container to note the host then)."""
    server = make_server()
    host_token = server.tenant("hoster", Scope.HOST).token
    renter = server.tenant("renter").token
    host_id = server.register_host(host_token, "box", gpus=_gpus(1))
    loop = SchedulerLoop(server.state)
    loop.tick()
    server.ok("POST", "/v1/pods", token=renter, json={"name": "solo", "gpu": "H100"})
    loop.tick()
    with server.state.engine.connect() as conn:
        noted = conn.execute(select(pods.c.host_id).where(pods.c.name == "solo")).scalar_one()
    assert noted == host_id
    with Statements(server) as after:
        loop.tick()
    wrote = [s for s in after.seen if s.lstrip().upper().startswith(("UPDATE", "INSERT"))]
    assert not [s for s in wrote if "pods" in s.split("SET")[0]], wrote


def test_a_tick_settles_only_pods_whose_containers_changed_and_misses_none(
    make_server: MakeServer, monkeypatch: Any
) -> None:
    """After the first tick, settling looks only at pods whose containers changed since
    (and stopping ones), not at every running pod; a container stopped by another replica
    (or a preemption) is still settled by the next tick, before anything replaces it."""
    import crucible.server.scheduler.loop as loop_module

    server, replica = make_server(), make_server()
    host_token = server.tenant("hoster", Scope.HOST).token
    renter = server.tenant("renter").token
    server.register_host(host_token, "box", gpus=_gpus(2))
    loop = SchedulerLoop(server.state)
    for name in ("kept", "ended"):
        server.ok("POST", "/v1/pods", token=renter, json={"name": name, "gpu": "H100"})
    loop.tick()
    loop.tick()  # on PostgreSQL the marks come from the last tick's barrier
    seen: list[int | None] = []
    real = loop_module.settle_pods

    def settle(conn: Any, now_ms: int, since: int | None = None) -> list[str]:
        seen.append(since)
        return real(conn, now_ms, since)

    monkeypatch.setattr(loop_module, "settle_pods", settle)
    loop.tick()
    assert seen and seen[-1] is not None  # only what changed was looked at

    def container_of(name: str) -> Any:
        with server.state.engine.connect() as conn:
            return conn.execute(
                select(containers.c.id, containers.c.state)
                .join(pods, pods.c.function_id == containers.c.function_id)
                .where(pods.c.name == name)
            ).all()

    (ended,) = container_of("ended")
    with replica.state.engine.begin() as conn:  # another replica stops it
        conn.execute(update(containers).where(containers.c.id == ended.id).values(state="stopping"))
    loop.tick()
    assert seen[-1] is not None
    assert [c.state for c in container_of("ended")] == ["stopping"]  # nothing replaced it
    with replica.state.engine.begin() as conn:
        conn.execute(
            update(containers)
            .where(containers.c.id == ended.id)
            .values(state="stopped", stopped_ms=server.state.clock.now_ms(), exit_code=0)
        )
    loop.tick()
    shown = {p["name"]: p["state"] for p in server.ok("GET", "/v1/pods", token=renter)}
    assert shown == {"kept": "pending", "ended": "stopped"}, shown


# Tables that grow with what the exchange has run (and keeps, until retention): a tick with
# nothing new must read them only through an index. Hosts (one row per machine) and the
# store's few change counters are read whole.
_GROWING = {"apps", "calls", "clusters", "containers", "functions", "pods"}


def test_a_quiet_tick_reads_the_growing_tables_only_through_indexes(
    make_server: MakeServer,
) -> None:
    """Every statement of a quiet tick, as SQLite plans it with the tick's own parameters:
    none scans a table that grows with the calls, apps, pods and clusters the exchange ever
    had (a scan in function order to make a DISTINCT, or of every app to find the few
    retiring ones, read them all each tick)."""
    server = make_server()
    engine = server.state.engine
    if engine.dialect.name != "sqlite":
        pytest.skip("the plans checked are SQLite's (EXPLAIN QUERY PLAN)")
    host_token = server.tenant("hoster", Scope.HOST).token
    renter = server.tenant("renter").token
    server.register_host(host_token, "box", gpus=_gpus(2))
    for name in ("one", "two"):
        server.ok("POST", "/v1/pods", token=renter, json={"name": name, "gpu": "H100"})
    server.ok("POST", "/v1/apps", token=renter, json={"name": "scratch"})  # an ephemeral app
    loop = SchedulerLoop(server.state)
    for _ in range(3):  # places the pods, then settles only what changed since
        loop.tick()
    ran: list[tuple[str, Any]] = []

    def note(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        ran.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", note)
    try:
        loop.tick()
    finally:
        event.remove(engine, "before_cursor_execute", note)
    reads = [(s, p) for s, p in ran if s.lstrip().upper().startswith("SELECT")]
    assert any("change_seq >" in s for s, _ in reads)  # the pods were settled from a mark
    scans = []
    raw = engine.raw_connection()
    try:
        for statement, parameters in reads:
            for row in raw.cursor().execute("EXPLAIN QUERY PLAN " + statement, parameters):
                words = str(row[3]).split()
                if words[:1] == ["SCAN"] and words[1] in _GROWING:
                    scans.append(f"{row[3]}: {' '.join(statement.split())[:200]}")
    finally:
        raw.close()
    assert scans == [], "\n".join(scans)


def test_silent_hosts_are_looked_for_only_once_one_could_be_silent(
    make_server: MakeServer,
) -> None:
    """A tick reads every host's row to find silent ones only once the oldest last sync of a
    ready host could be past the host timeout (or 5 s since the last look): the quiet
    ticks between read no host row for it, and a host that falls silent is still lost at
    its timeout, and one made silent behind the loop's back within 5 s."""
    server = make_server(host_timeout_s=12)
    clock = ManualClock(1_800_000_000_000)
    server.state.clock = clock
    host_token = server.tenant("hoster", Scope.HOST).token
    quiet = server.register_host(host_token, "quiet")
    chatty = server.register_host(host_token, "chatty")
    loop = SchedulerLoop(server.state)
    loop.tick()
    looks: list[int] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # A read of every ready host's last sync (the oldest, or the silent ones): once a tick.
        read = "FROM hosts" in statement and "WHERE hosts.state" in statement
        if read and "last_seen_ms" in statement and (not looks or looks[-1] != clock.now):
            looks.append(clock.now)

    def state(host_id: str) -> str:
        with server.state.engine.connect() as conn:
            return str(conn.execute(select(hosts.c.state).where(hosts.c.id == host_id)).scalar())

    event.listen(server.state.engine, "before_cursor_execute", note)
    try:
        start = clock.now
        for _ in range(160):  # up to 16 s of 100 ms ticks; only "chatty" syncs
            clock.now += 100
            if clock.now % 1_000 == 0:
                server.ok("POST", f"/v1/hosts/{chatty}/sync", token=host_token, json={})
            loop.tick()
            if state(quiet) == "lost":
                break
        # No host can be lost before the scheduler has had the store for the timeout (it
        # started at `start`): the first look is the first tick past it, when it was lost;
        # no tick before read the hosts for it.
        assert [t - start for t in looks] == [12_100]
        assert (state(quiet), state(chatty)) == ("lost", "ready")
        # A host made silent in the store itself (not by the clock) is found within 5 s.
        with server.state.engine.begin() as conn:
            conn.execute(update(hosts).where(hosts.c.id == chatty).values(last_seen_ms=0))
        for _ in range(50):
            clock.now += 100
            loop.tick()
        assert state(chatty) == "lost"
    finally:
        event.remove(server.state.engine, "before_cursor_execute", note)
