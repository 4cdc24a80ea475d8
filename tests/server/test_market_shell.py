"""The market inside the control plane, in-process with the scheduler's tick driven by hand:
GPU containers are market leases, a reservation preempts an interruptible lease (its call is
requeued as a preemption, its metering ends at the notice), and a restarted server rebuilds
the same market from the store."""

from __future__ import annotations

import time

from sqlalchemy import select

from crucible.protocol.accounts import Scope
from crucible.sdk._stop_hooks import drop_stop_hooks_after, on_stop, run_stop_hooks, stop_hooks_mark
from crucible.server.billing.entries import check_ledger
from crucible.server.billing.service import meter_containers
from crucible.server.scheduler.loop import SchedulerLoop
from crucible.server.store.tables import calls, containers

from server_testlib import FULL_ISOLATION, MakeServer, ServerUnderTest

H100 = [
    {"index": i, "model": "H100", "memory_mib": 81920, "uuid": f"GPU-{i}", "fake": True}
    for i in range(2)
]


def _setup(server: ServerUnderTest) -> tuple[str, str, str]:
    host_id = server.register_host(server.tenant("hoster", Scope.HOST).token, "gpu-1", gpus=H100)
    server.ok(
        "PUT",
        f"/v1/hosts/{host_id}/offers",
        token=server.tenant("hoster").token,
        json={
            "device_type": "H100",
            "on_demand_micros": 2_000_000,
            "interruptible_min_micros": 500_000,
            "reserved_micros": 1_500_000,
        },
    )
    renter = server.tenant("renter").token
    fn = server.new_function(
        renter,
        server.new_app(renter),
        server.put_blob(renter),
        resources={"cpu": 1, "memory_mib": 1024, "gpus": [{"model": "H100", "count": 2}]},
        market={"tier": "interruptible", "bid_micros": 700_000},
    )
    return host_id, renter, fn


def test_a_gpu_container_is_a_market_lease_and_a_reservation_preempts_it(
    server: ServerUnderTest,
) -> None:
    host_id, renter, fn = _setup(server)
    [call] = server.new_calls(renter, fn)
    SchedulerLoop(server.state).tick()
    with server.state.engine.begin() as conn:
        ct = conn.execute(select(containers).where(containers.c.function_id == fn)).one()
        assert (ct.host_id, ct.tier, ct.unit_price_micros) == (host_id, "interruptible", 700_000)
        assert ct.rate_micros_per_hour == 1_400_000 and sorted(ct.gpu_indices) == [0, 1]
        # Pretend the container started and took the call.
        now = int(time.time() * 1000)
        conn.execute(
            containers.update()
            .where(containers.c.id == ct.id)
            .values(state="running", started_ms=now - 5_000)
        )
        conn.execute(
            calls.update()
            .where(calls.c.id == call)
            .values(state="running", container_id=ct.id, attempts=1, started_ms=now - 5_000)
        )
    lease = server.state.market.market.get_lease(ct.id)
    assert lease.tier.value == "interruptible" and lease.price_micros_per_device_hour == 700_000

    # A reservation starting now pays $1.50 > $0.70: it takes the devices at once.
    other = server.tenant("planner").token
    r = server.ok(
        "POST",
        "/v1/reservations",
        token=other,
        json={"gpu": "2xH100", "start_ms": int(time.time() * 1000), "hours": 1},
    )
    assert r["hosts"] == [host_id]
    with server.state.engine.connect() as conn:
        ct = conn.execute(select(containers).where(containers.c.id == ct.id)).one()
        assert ct.state == "stopping" and ct.end_cause == "preempted"
        assert ct.lease_end_ms is not None and ct.stop_grace_ms == 30_000
        c = conn.execute(select(calls).where(calls.c.id == call)).one()
        assert (c.state, c.preemptions, c.container_id) == ("queued", 1, None)
        assert c.cost_micros > 0  # the preempted attempt's five seconds, carried
        assert check_ledger(conn) == []
    info = server.ok("GET", f"/v1/calls/{call}", token=renter)
    assert info["preemptions"] == 1 and info["state"] == "queued"
    # Its timeline keeps the preempted attempt: where it ran and what it cost.
    tl = server.ok("GET", f"/v1/calls/{call}/timeline", token=renter)
    [first] = tl["history"]
    assert (first["attempt"], first["outcome"], first["container_id"]) == (1, "preempted", ct.id)
    assert first["host_id"] == host_id and first["cost_micros"] == c.cost_micros
    assert tl["phases"][-1]["phase"] == "queued" and tl["phases"][-1]["attempt"] == 2
    assert "preemption" in tl["phases"][-1]["detail"]

    # The requeued call waits: the only H100s are reserved by someone else.
    SchedulerLoop(server.state).tick()
    with server.state.engine.connect() as conn:
        assert (
            conn.execute(
                select(containers.c.id).where(
                    containers.c.function_id == fn, containers.c.state == "pending"
                )
            ).all()
            == []
        )


def test_a_restarted_server_rebuilds_the_market_from_the_store(
    make_server: MakeServer,
) -> None:
    first = make_server()
    _, renter, fn = _setup(first)
    first.new_calls(renter, fn)
    SchedulerLoop(first.state).tick()
    [before] = first.ok("GET", "/v1/market/book?gpu=H100", token=renter)
    assert before["free_devices"] == 0 and before["leased"]["interruptible"] == 2

    second = make_server()  # same store, fresh process state
    [after] = second.ok("GET", "/v1/market/book?gpu=H100", token=renter)
    assert (after["free_devices"], after["leased"]) == (before["free_devices"], before["leased"])
    q = second.ok("POST", "/v1/market/quote", token=renter, json={"gpu": "H100"})
    assert q["available"] and q["preempts"] == 1  # on demand would preempt the $0.70 bid


def test_stop_hooks_of_an_input_are_dropped_when_it_ends() -> None:
    ran: list[str] = []
    mark = stop_hooks_mark()
    on_stop(lambda: ran.append("module"))
    per_input = stop_hooks_mark()
    on_stop(lambda: ran.append("input 1"))
    drop_stop_hooks_after(per_input)
    on_stop(lambda: ran.append("input 2"))

    def broken() -> None:
        raise RuntimeError("a hook that fails does not stop the others")

    on_stop(broken)
    assert run_stop_hooks() == 3
    assert ran == ["module", "input 2"]
    assert stop_hooks_mark() == 0 and mark == 0


def test_an_account_out_of_credit_is_drained_and_let_back_in(make_server: MakeServer) -> None:
    server = make_server(require_credits=True)
    admin = server.tenant("ops", Scope.ADMIN).token
    _, renter, fn = _setup(server)
    grant = {"account": "renter", "amount_micros": 1_000_000, "key": "first"}
    server.ok("POST", "/v1/credits/grants", token=admin, json=grant)
    [call] = server.new_calls(renter, fn)
    loop = SchedulerLoop(server.state)
    loop.tick()
    with server.state.engine.begin() as conn:
        ct = conn.execute(select(containers).where(containers.c.function_id == fn)).one()
        assert ct.state == "pending" and ct.tier == "interruptible"
        # It ran for ten hours: $14 of a $1 balance.
        now = int(time.time() * 1000)
        conn.execute(
            containers.update()
            .where(containers.c.id == ct.id)
            .values(state="running", started_ms=now - 36_000_000)
        )
        meter_containers(conn, now, 3_600_000)  # the balance goes negative ...
    loop.tick()  # ... and the account is drained
    with server.state.engine.connect() as conn:
        ct = conn.execute(select(containers).where(containers.c.id == ct.id)).one()
        assert (ct.state, ct.end_cause) == ("stopping", "out_of_credit")
        assert conn.execute(select(calls.c.state).where(calls.c.id == call)).scalar() == "failed"
        assert check_ledger(conn) == []
    r = server.request(
        "POST",
        f"/v1/functions/{fn}/calls",
        token=renter,
        json={"inputs": [{"args": {"data": "gAQ="}}]},
    )
    assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_credit"
    assert "crucible credits grant" in r.json()["error"]["message"]
    assert not server.state.market.market.running_leases("renter")

    server.ok(
        "POST",
        "/v1/credits/grants",
        token=admin,
        json={"account": "renter", "amount_micros": 100_000_000, "key": "top-up"},
    )
    assert server.new_calls(renter, fn)  # accepted at once after the grant


def test_prefer_fastest_tries_the_fallback_list_fastest_model_first(
    server: ServerUnderTest,
) -> None:
    gpus = [
        {"index": 0, "model": "L4", "memory_mib": 24576, "uuid": "GPU-L4", "fake": True},
        {"index": 1, "model": "H100", "memory_mib": 81920, "uuid": "GPU-H100", "fake": True},
    ]
    server.register_host(server.tenant("hoster", Scope.HOST).token, "mixed", gpus=gpus)
    renter = server.tenant("renter").token
    app_id = server.new_app(renter)
    blob = server.put_blob(renter)
    choices = [{"model": "L4", "count": 1}, {"model": "H100", "count": 1}]
    placed = {}
    # Fastest first, alone on the host: with both models free it must pick the H100.
    for prefer in ("fastest", "cheapest"):
        fn = server.new_function(
            renter,
            app_id,
            blob,
            name=f"f_{prefer}",
            resources={"cpu": 1, "memory_mib": 1024, "gpus": choices},
            market={"prefer": prefer},
        )
        server.new_calls(renter, fn)
        SchedulerLoop(server.state).tick()
        with server.state.engine.connect() as conn:
            placed[prefer] = conn.execute(
                select(containers.c.gpu_model).where(containers.c.function_id == fn)
            ).scalar_one()
    # The list's order for cheapest; the H100 (faster) first for fastest.
    assert placed == {"cheapest": "L4", "fastest": "H100"}


def test_a_gpu_lease_goes_to_a_host_that_also_has_the_cpu(server: ServerUnderTest) -> None:
    """The market's cheapest host has the GPU but too few cores for the container: the lease
    goes to the next host that has both (it used to be refused on every tick instead)."""
    hoster = server.tenant("hoster", Scope.HOST).token
    offers = {"cheap-small": 1_000_000, "dear-big": 3_000_000}
    for name, price in offers.items():
        host_id = server.register_host(
            hoster, name, gpus=H100[:1], cpu_cores=2 if name == "cheap-small" else 16
        )
        server.ok(
            "PUT",
            f"/v1/hosts/{host_id}/offers",
            token=server.tenant("hoster").token,
            json={
                "device_type": "H100",
                "on_demand_micros": price,
                "interruptible_min_micros": price // 4,
                "reserved_micros": price,
            },
        )
        offers[name] = host_id  # type: ignore[assignment]
    renter = server.tenant("renter").token
    fn = server.new_function(
        renter,
        server.new_app(renter),
        server.put_blob(renter),
        resources={"cpu": 4, "memory_mib": 1024, "gpus": [{"model": "H100", "count": 1}]},
    )
    server.new_calls(renter, fn)
    SchedulerLoop(server.state).tick()
    with server.state.engine.connect() as conn:
        ct = conn.execute(select(containers).where(containers.c.function_id == fn)).one()
    assert (ct.host_id, ct.unit_price_micros) == (offers["dear-big"], 3_000_000)


def test_a_cluster_skips_hosts_without_the_cpu_for_a_member(server: ServerUnderTest) -> None:
    """Two members of 4 cores each; the cheapest host has its GPU but 2 cores: the gang goes
    to the two hosts that have both (it used to wait on every tick instead)."""
    hoster = server.tenant("hoster", Scope.HOST).token
    ids = {}
    for name, price, cores in (("a-cheap", 1, 2), ("b-mid", 2, 16), ("c-dear", 3, 16)):
        ids[name] = server.register_host(
            hoster,
            name,
            isolation=FULL_ISOLATION.model_copy(update={"cluster_network": True}),
            gpus=H100[:1],
            cpu_cores=cores,
        )
        server.ok(
            "PUT",
            f"/v1/hosts/{ids[name]}/offers",
            token=server.tenant("hoster").token,
            json={
                "device_type": "H100",
                "on_demand_micros": price * 1_000_000,
                "interruptible_min_micros": price * 250_000,
                "reserved_micros": price * 1_000_000,
            },
        )
    renter = server.tenant("renter").token
    server.ok(
        "POST",
        "/v1/clusters",
        token=renter,
        json={"name": "ring", "nodes": 2, "gpu": "H100:1", "cpu": 4},
    )
    SchedulerLoop(server.state).tick()
    with server.state.engine.connect() as conn:
        placed = set(conn.execute(select(containers.c.host_id)).scalars())
    assert placed == {ids["b-mid"], ids["c-dear"]}, server.state.leader.waiting


def test_on_demand_preempts_a_bid_that_holds_the_hosts_cores(server: ServerUnderTest) -> None:
    """The market would preempt a lower bid for an on-demand request, but the host was passed
    over for lacking the cores the bid's container held, so the on-demand work waited for
    ever behind a bid paying less than the ask (money probe). Preemption, last, now counts
    what the preempted containers give back."""
    hoster = server.tenant("hoster", Scope.HOST).token
    host_id = server.register_host(hoster, "gpu-1", gpus=H100, cpu_cores=2, memory_mib=8192)
    server.ok(
        "PUT",
        f"/v1/hosts/{host_id}/offers",
        token=server.tenant("hoster").token,
        json={
            "device_type": "H100",
            "on_demand_micros": 3_000_000,
            "interruptible_min_micros": 500_000,
            "reserved_micros": 2_000_000,
        },
    )
    bidder = server.tenant("bidder").token
    cheap = server.new_function(
        bidder,
        server.new_app(bidder),
        server.put_blob(bidder),
        resources={"cpu": 2, "memory_mib": 4096, "gpus": [{"model": "H100", "count": 2}]},
        market={"tier": "interruptible", "bid_micros": 1_500_000},
    )
    server.new_calls(bidder, cheap)
    loop = SchedulerLoop(server.state)
    loop.tick()
    with server.state.engine.connect() as conn:
        [bid] = conn.execute(select(containers).where(containers.c.function_id == cheap)).all()
    assert bid.host_id == host_id and bid.tier == "interruptible"

    renter = server.tenant("renter").token
    urgent = server.new_function(
        renter,
        server.new_app(renter),
        server.put_blob(renter),
        resources={"cpu": 1, "memory_mib": 2048, "gpus": [{"model": "H100", "count": 1}]},
    )
    server.new_calls(renter, urgent)
    loop.tick()
    with server.state.engine.connect() as conn:
        bid = conn.execute(select(containers).where(containers.c.id == bid.id)).one()
        placed = conn.execute(select(containers).where(containers.c.function_id == urgent)).all()
    assert bid.end_cause == "preempted", bid
    assert len(placed) == 1 and placed[0].host_id == host_id and placed[0].tier == "on_demand"
    assert placed[0].unit_price_micros == 3_000_000
