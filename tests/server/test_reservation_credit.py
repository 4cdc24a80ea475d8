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
