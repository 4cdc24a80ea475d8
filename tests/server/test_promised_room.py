"""Room an account's idle GPU container gave up for that account's queued work stays
promised to that work until its calls are taken: a container started for them that is lost
before it takes one does not hand the GPU to another account's older call (SQLite and
PostgreSQL, the scheduler loop ticked by hand, the agent's syncs through the API)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from crucible.protocol.accounts import Scope
from crucible.server.scheduler.loop import SchedulerLoop
from crucible.server.store.tables import containers

from server_testlib import MakeServer

H100 = {"gpus": [{"model": "H100", "count": 1}], "cpu": 0.25, "memory_mib": 256}


def _live(server: Any, fn: str) -> list[Any]:
    with server.state.engine.connect() as conn:
        return list(
            conn.execute(
                select(containers.c.id, containers.c.state, containers.c.gpu_model).where(
                    containers.c.function_id == fn, containers.c.state != "stopped"
                )
            )
        )


def test_room_made_for_a_function_is_its_own_until_its_calls_are_taken(
    make_server: MakeServer,
) -> None:
    server = make_server()
    clock = server.state.clock
    host_token = server.tenant("hoster", Scope.HOST).token
    host_id = server.register_host(
        host_token,
        "box",
        gpus=[{"index": 0, "model": "H100", "memory_mib": 81920, "uuid": "GPU-0", "fake": True}],
    )
    owner, stranger = server.tenant("owner").token, server.tenant("stranger").token
    blob = server.put_blob(owner)
    loop = SchedulerLoop(server.state)
    seq = 0

    def sync(*reports: dict[str, Any]) -> None:
        nonlocal seq
        seq += 1
        body = {"containers": list(reports), "seq": seq}
        server.ok("POST", f"/v1/hosts/{host_id}/sync", token=host_token, json=body)

    def report(container_id: str, state: str, **more: Any) -> dict[str, Any]:
        return {"container_id": container_id, "state": state, **more}

    # The owner's first function keeps a container on the host's one H100, idle for an hour.
    first_app = server.new_app(owner, "first")
    first = server.new_function(
        owner, first_app, blob, resources=H100, min_containers=1, scaledown_window_s=3600
    )
    loop.tick()
    [(kept, _, model)] = _live(server, first)
    assert model == "H100"
    sync(report(kept, "running"))
    with server.state.engine.begin() as conn:  # its worker connected: it is ready
        now = clock.now_ms()
        conn.execute(
            update(containers)
            .where(containers.c.id == kept)
            .values(state="running", ready_ms=now, last_active_ms=now)
        )
    # No longer wanted, but kept warm for its scale-down window.
    server.new_function(owner, first_app, blob, resources=H100, scaledown_window_s=3600)
    # Another account's call waits: an idle lease is not taken from its renter by others.
    theirs_app = server.new_app(stranger, "theirs")
    theirs = server.new_function(stranger, theirs_app, server.put_blob(stranger), resources=H100)
    server.new_calls(stranger, theirs)
    loop.tick()
    assert _live(server, theirs) == []
    # The owner's own work: the idle container yields, and its H100 is promised.
    second = server.new_function(owner, server.new_app(owner, "second"), blob, resources=H100)
    server.new_calls(owner, second)
    loop.tick()
    assert [r.state for r in _live(server, first)] == ["stopping"]
    sync(report(kept, "running"))  # told to stop it
    sync(report(kept, "exited", reason="stopped", exit_code=0))
    loop.tick()
    [(started, _, _)] = _live(server, second)
    # Its container is lost before it takes the call (the agent no longer runs it).
    sync(report(started, "starting"))
    sync()
    assert _live(server, second) == []
    loop.tick()
    assert [r.gpu_model for r in _live(server, second)] == ["H100"]
    assert _live(server, theirs) == []


def test_a_promise_ends_once_the_room_is_in_use(make_server: MakeServer) -> None:
    """Kept while the function's calls wait and no container of its became ready since the
    room was made (a started one may still be lost); over once a new one is ready, its calls
    are taken, or a minute has passed, so a function with a long backlog does not go before
    others' older work for longer than its room needed."""
    from crucible.core.scheduling import ContainerView, FunctionDemand

    loop = SchedulerLoop(make_server().state)

    def demand(queued: int, *states: str) -> FunctionDemand:
        views = tuple(
            ContainerView(f"ct-{i}", "ho-1", s, 0, 0, busy=s == "running")
            for i, s in enumerate(states)
        )
        return FunctionDemand("fn-b", 1.0, 256, (), queued, 0, 0, None, None, views, 10, 60_000)

    loop._keep_promises({"fn-b"}, [demand(5, "running")], 1_000)  # one was ready already
    assert loop._promise(2_000, [demand(5, "running", "pending")]) == {"fn-b"}  # started
    assert loop._promise(3_000, [demand(5, "running")]) == {"fn-b"}  # lost before ready
    assert loop._promise(4_000, [demand(4, "running", "running")]) == set()  # in use
    loop._keep_promises({"fn-b"}, [demand(5)], 5_000)
    assert loop._promise(6_000, [demand(0, "pending")]) == set()  # its calls were taken
    loop._keep_promises({"fn-b"}, [demand(5)], 7_000)
    assert loop._promise(7_000 + 59_999, [demand(5, "pending")]) == {"fn-b"}
    assert loop._promise(7_000 + 60_000, [demand(5, "pending")]) == set()  # a minute
