"""A reservation is new spend: with credits required it must fit the balance and the daily
cap of the day its window starts (a $1/day cap let a $24.77 reservation through, which then
blocked the account's work until midnight); and a "start now" reservation is decided at the
time the market lock gives it (requests racing for it were refused as "in the past")."""

from __future__ import annotations

from crucible.protocol.accounts import Scope

from server_testlib import MakeServer, ServerUnderTest, error_code

H100 = [
    {"index": i, "model": "H100", "memory_mib": 81920, "uuid": f"GPU-{i}", "fake": True}
    for i in range(4)
]


def _priced_host(server: ServerUnderTest) -> None:
    host_id = server.register_host(server.tenant("hoster", Scope.HOST).token, "gpu-1", gpus=H100)
    server.ok(
        "PUT",
        f"/v1/hosts/{host_id}/offers",
        token=server.tenant("hoster").token,
        json={
            "device_type": "H100",
            "on_demand_micros": 2_000_000,
            "interruptible_min_micros": 800_000,
            "reserved_micros": 1_000_000,  # $1 per device-hour
        },
    )


def test_a_reservation_must_fit_the_daily_cap(make_server: MakeServer) -> None:
    server = make_server(require_credits=True)
    _priced_host(server)
    admin = server.tenant("ops", Scope.ADMIN).token
    renter = server.tenant("renter").token
    server.ok(
        "POST",
        "/v1/credits/grants",
        token=admin,
        json={"account": "renter", "amount_micros": 100_000_000, "key": "g"},
    )
    server.ok(
        "PUT", "/v1/credits/cap", token=renter, json={"account": "renter", "cap_micros": 3_000_000}
    )
    now = server.state.clock.now_ms()
    r = server.request(
        "POST", "/v1/reservations", token=renter, json={"gpu": "H100", "start_ms": now, "hours": 4}
    )
    assert r.status_code == 402 and error_code(r) == "insufficient_credit", r.text
    message = r.json()["error"]["message"]
    assert "$4.00" in message and "daily cap of $3.00" in message and "credits cap" in message
    # Within the cap it is sold, and what is left of the cap counts.
    body = {"gpu": "H100", "start_ms": now, "hours": 2}
    assert (
        server.ok("POST", "/v1/reservations", token=renter, json=body)["cost_micros"] == 2_000_000
    )
    r = server.request("POST", "/v1/reservations", token=renter, json=body)
    assert r.status_code == 402 and "to $4.00, past the daily cap" in r.text, r.text


def test_start_now_is_the_market_s_now(server: ServerUnderTest) -> None:
    _priced_host(server)
    renter = server.tenant("renter").token
    now = server.state.clock.now_ms()
    # The market's clock ran ahead of this request's (another request or a tick took the
    # lock first): the window still starts now.
    live = server.state.market
    with live.lock:
        live.market.advance(now + 50)
    r = server.ok(
        "POST", "/v1/reservations", token=renter, json={"gpu": "H100", "start_ms": now, "hours": 1}
    )
    assert r["start_ms"] >= now + 50 and r["end_ms"] - r["start_ms"] == 3_600_000
    tiny = {"gpu": "H100", "start_ms": now, "hours": 1e-300}
    r2 = server.request("POST", "/v1/reservations", token=renter, json=tiny)
    assert r2.status_code == 400 and "must last longer than" in r2.text, r2.text


def test_a_reservation_paid_with_the_last_of_the_balance_can_be_used(
    make_server: MakeServer,
) -> None:
    """A reservation that took the balance to zero was dead money: every call was refused
    (402) and every container drained for want of credit, though work inside the reservation
    costs nothing more. Now the account runs what it paid for, and nothing else."""
    from sqlalchemy import select

    from crucible.server.scheduler.loop import SchedulerLoop
    from crucible.server.store.tables import containers

    server = make_server(require_credits=True)
    _priced_host(server)
    admin = server.tenant("ops", Scope.ADMIN).token
    renter = server.tenant("renter").token
    grant = {"account": "renter", "amount_micros": 2_000_000, "key": "g"}
    server.ok("POST", "/v1/credits/grants", token=admin, json=grant)
    now = server.state.clock.now_ms()
    body = {"gpu": "H100", "start_ms": now, "hours": 2}
    assert server.ok("POST", "/v1/reservations", token=renter, json=body)["cost_micros"] == (
        2_000_000
    )
    assert server.ok("GET", "/v1/credits", token=renter)["balance_micros"] == 0
    app = server.new_app(renter)
    bundle = server.put_blob(renter)
    gpu = {"cpu": 1, "memory_mib": 1024, "gpus": [{"model": "H100", "count": 1}]}
    reserved = server.new_function(renter, app, bundle, resources=gpu, market={"tier": "reserved"})
    on_demand = server.new_function(renter, app, bundle, name="od", resources=gpu)
    loop = SchedulerLoop(server.state)
    r = server.request(
        "POST",
        f"/v1/functions/{on_demand}/calls",
        token=renter,
        json={"inputs": [{"args": {"data": "gAQ="}}]},
    )
    assert r.status_code == 402 and error_code(r) == "insufficient_credit", r.text
    [call] = server.new_calls(renter, reserved)  # accepted: it runs in the reservation
    for _ in range(3):  # the account, active now, is found without credit and stays so
        loop.tick()
    assert server.state.leader.credit_blocked, "the account has no credit"
    with server.state.engine.connect() as conn:
        placed = conn.execute(
            select(containers.c.state, containers.c.reservation_id).where(
                containers.c.function_id == reserved
            )
        ).all()
    assert len(placed) == 1 and placed[0].reservation_id is not None, placed
    assert placed[0].state != "stopped"
    info = server.ok("GET", f"/v1/calls/{call}", token=renter)
    assert info["state"] in ("queued", "running"), info


def test_the_bill_counts_a_reservation_on_the_day_the_cap_does(make_server: MakeServer) -> None:
    """A window bought now for later counts toward the day it starts in the daily cap; the
    bill put it on the day it was bought, so `bill --since today` and "spent today" differed
    by the reservation (money probe). Both count it by its window's start now."""
    server = make_server()
    _priced_host(server)
    renter = server.tenant("renter").token
    now = server.state.clock.now_ms()
    start = now + 2 * 3_600_000
    body = {"gpu": "H100", "start_ms": start, "hours": 3}
    made = server.ok("POST", "/v1/reservations", token=renter, json=body)
    assert made["start_ms"] == start and made["cost_micros"] == 3_000_000

    def reserved(query: str) -> int:
        return int(server.ok("GET", f"/v1/bill{query}", token=renter)["reservations_micros"])

    assert reserved(f"?since_ms={start}") == 3_000_000
    assert reserved(f"?until_ms={start}") == 0  # bought before, counted on its window's day
    assert reserved(f"?since_ms={start + 1}") == 0
    assert reserved("") == 3_000_000
