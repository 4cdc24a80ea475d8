"""A host that re-registers with another inventory (more GPUs, fewer, none) keeps the
scheduler working: the market takes it out and puts it back with its new devices, leases that
run keep the devices they were granted until they end, and a restarted server rebuilds the
market even when the store holds leases on devices a host no longer has.

The review's case: register 1xH100, sync, re-register the same name with 2xH100, and every
tick failed with "host ... is already in the market" until the server restarted.
"""

from __future__ import annotations

from sqlalchemy import select, update

from crucible.protocol.accounts import Scope
from crucible.server.billing.entries import check_ledger
from crucible.server.scheduler.loop import SchedulerLoop
from crucible.server.store.tables import containers

from server_testlib import MakeServer, ManualClock, ServerUnderTest


def _gpus(n: int, model: str) -> list[dict[str, object]]:
    return [
        {"index": i, "model": model, "memory_mib": 81920, "uuid": f"GPU-{i}", "fake": True}
        for i in range(n)
    ]


def _register(server: ServerUnderTest, token: str, n: int, model: str = "H100") -> str:
    return server.register_host(token, "gpu-box", gpus=_gpus(n, model))


def _free(server: ServerUnderTest, token: str, model: str = "H100") -> tuple[int, int]:
    books = server.ok("GET", f"/v1/market/book?gpu={model}", token=token)
    if not books:
        return 0, 0
    [book] = books
    return int(book["free_devices"]), int(book["listed_devices"])


def _gpu_function(server: ServerUnderTest, renter: str, count: int) -> str:
    return server.new_function(
        renter,
        server.new_app(renter),
        server.put_blob(renter),
        resources={"cpu": 1, "memory_mib": 1024, "gpus": [{"model": "H100", "count": count}]},
    )


def test_a_host_that_re_registers_with_more_gpus_sells_them_all(server: ServerUnderTest) -> None:
    host_token = server.tenant("hoster", Scope.HOST).token
    renter = server.tenant("renter").token
    loop = SchedulerLoop(server.state)
    host_id = _register(server, host_token, 1)
    server.ok("POST", f"/v1/hosts/{host_id}/sync", token=host_token, json={})
    loop.tick()
    assert _free(server, renter) == (1, 1)

    assert _register(server, host_token, 2) == host_id  # same name, same host, 2 GPUs now
    server.ok("POST", f"/v1/hosts/{host_id}/sync", token=host_token, json={})
    for _ in range(3):
        loop.tick()  # raised "host ... is already in the market" on every tick
    assert _free(server, renter) == (2, 2)

    # And the scheduler places on the new devices.
    fn = _gpu_function(server, renter, 2)
    server.new_calls(renter, fn)
    loop.tick()
    with server.state.engine.connect() as conn:
        ct = conn.execute(select(containers).where(containers.c.function_id == fn)).one()
    assert (ct.host_id, sorted(ct.gpu_indices)) == (host_id, [0, 1])
    assert _free(server, renter) == (0, 2)


def test_a_host_that_loses_its_gpus_leaves_the_market(server: ServerUnderTest) -> None:
    host_token = server.tenant("hoster", Scope.HOST).token
    renter = server.tenant("renter").token
    loop = SchedulerLoop(server.state)
    host_id = _register(server, host_token, 2)
    loop.tick()
    assert _free(server, renter) == (2, 2)

    assert _register(server, host_token, 0) == host_id
    loop.tick()
    assert _free(server, renter) == (0, 0)  # it used to go on selling the GPUs it lost
    q = server.ok("POST", "/v1/market/quote", token=renter, json={"gpu": "H100"})
    assert not q["available"]

    _register(server, host_token, 1)
    loop.tick()
    assert _free(server, renter) == (1, 1)


def test_a_lease_keeps_its_devices_while_the_inventory_shrinks(server: ServerUnderTest) -> None:
    host_token = server.tenant("hoster", Scope.HOST).token
    renter = server.tenant("renter").token
    loop = SchedulerLoop(server.state)
    host_id = _register(server, host_token, 3)
    fn = _gpu_function(server, renter, 1)
    server.new_calls(renter, fn)
    loop.tick()
    with server.state.engine.connect() as conn:
        ct = conn.execute(select(containers).where(containers.c.function_id == fn)).one()
    assert ct.host_id == host_id
    assert _free(server, renter) == (2, 3)

    _register(server, host_token, 1)  # two GPUs gone while a lease holds one of the three
    for _ in range(2):
        loop.tick()
    assert server.state.market.market.get_lease(ct.id).devices == tuple(ct.gpu_indices)
    # Nothing new is leased on the devices the host no longer reports: it drains.
    q = server.ok("POST", "/v1/market/quote", token=renter, json={"gpu": "H100"})
    assert not q["available"]
    assert _free(server, renter) == (0, 0)
    # The host is still known to the market (draining and offers still apply to it).
    owner = server.tenant("hoster").token
    server.ok("PATCH", f"/v1/hosts/{host_id}/profile", token=owner, json={"draining": True})
    loop.tick()

    # The container ends: the host comes back with the one GPU it has now.
    with server.state.engine.begin() as conn:
        conn.execute(
            update(containers).where(containers.c.id == ct.id).values(state="stopped", stopped_ms=1)
        )
    server.ok("PATCH", f"/v1/hosts/{host_id}/profile", token=owner, json={"draining": False})
    loop.tick()
    loop.tick()
    assert server.state.market.market.host(host_id).gpus == ((0, "H100"),)
    # The call (still queued: its container never took it) gets the one GPU there is.
    assert _free(server, renter) == (0, 1)
    with server.state.engine.connect() as conn:
        again = conn.execute(
            select(containers).where(containers.c.function_id == fn, containers.c.id != ct.id)
        ).one()
    assert (again.host_id, again.gpu_indices) == (host_id, [0])
    with server.state.engine.connect() as conn:
        assert check_ledger(conn) == []


def test_a_host_held_back_by_a_lease_returns_with_its_new_devices_once_the_lease_ends(
    server: ServerUnderTest,
) -> None:
    """The host's row does not change when the lease on its old devices ends: the market
    looks at such a host at every tick (not only at rows that changed, nor only when offers
    are re-read every few seconds), so the next tick sells what it has now."""
    clock = ManualClock(1_800_000_000_000)
    server.state.clock = clock
    host_token = server.tenant("hoster", Scope.HOST).token
    renter = server.tenant("renter").token
    loop = SchedulerLoop(server.state)
    host_id = _register(server, host_token, 2)
    fn = _gpu_function(server, renter, 1)
    server.new_calls(renter, fn)
    loop.tick()
    with server.state.engine.connect() as conn:
        ct = conn.execute(select(containers).where(containers.c.function_id == fn)).one()
    _register(server, host_token, 1)  # one GPU gone while a lease holds one of the two
    loop.tick()
    loop.tick()
    assert _free(server, renter) == (0, 0)
    with server.state.engine.begin() as conn:
        conn.execute(
            update(containers).where(containers.c.id == ct.id).values(state="stopped", stopped_ms=1)
        )
    clock.now += 100  # well within the offers' re-read period
    loop.tick()
    clock.now += 100
    loop.tick()
    assert server.state.market.market.host(host_id).gpus == ((0, "H100"),)


def test_a_restart_rebuilds_the_market_when_leases_hold_devices_that_are_gone(
    make_server: MakeServer,
) -> None:
    first = make_server()
    host_token = first.tenant("hoster", Scope.HOST).token
    renter = first.tenant("renter").token
    _register(first, host_token, 2)
    fn = _gpu_function(first, renter, 2)
    first.new_calls(renter, fn)
    SchedulerLoop(first.state).tick()
    # The host now has other GPUs; the lease row on its H100s remains.
    _register(first, host_token, 1, "A100-80GB")

    second = make_server()  # same store: the market is rebuilt from it
    loop = SchedulerLoop(second.state)
    loop.tick()  # failed on every tick: "lease ...: host ... has no pool"
    assert second.state.market.market.running_leases() == []
    assert _free(second, renter, "A100-80GB") == (1, 1)
    assert _free(second, renter) == (0, 0)


def test_a_reservation_on_devices_the_host_no_longer_has_places_nothing(
    server: ServerUnderTest,
) -> None:
    """The market keeps a reservation's devices after the host registers again without them
    (the renter is not refunded: a known limit); a reserved container was then sent to the
    host with device indices it does not have. Now nothing is placed there, and the function
    says why."""
    host_token = server.tenant("hoster", Scope.HOST).token
    renter = server.tenant("renter").token
    loop = SchedulerLoop(server.state)
    host_id = _register(server, host_token, 2)
    server.ok("POST", f"/v1/hosts/{host_id}/sync", token=host_token, json={})
    loop.tick()
    now = server.state.clock.now_ms()
    server.ok(
        "POST",
        "/v1/reservations",
        token=renter,
        json={"gpu": "2xH100", "start_ms": now, "hours": 1},
    )
    assert _register(server, host_token, 1, "L4") == host_id
    server.ok("POST", f"/v1/hosts/{host_id}/sync", token=host_token, json={})
    # Another host has such GPUs, so the function is not one no host could ever run.
    other = server.register_host(host_token, "other-box", gpus=_gpus(2, "H100"))
    server.ok("POST", f"/v1/hosts/{other}/sync", token=host_token, json={})
    fn = server.new_function(
        renter,
        server.new_app(renter),
        server.put_blob(renter),
        resources={"cpu": 1, "memory_mib": 1024, "gpus": [{"model": "H100", "count": 2}]},
        market={"tier": "reserved"},
    )
    server.new_calls(renter, fn)
    for _ in range(3):
        loop.tick()
    with server.state.engine.connect() as conn:
        placed = conn.execute(select(containers).where(containers.c.function_id == fn)).all()
    assert placed == []
    assert "no longer has the H100 devices" in server.state.leader.waiting.get(fn, ""), (
        server.state.leader.waiting
    )
