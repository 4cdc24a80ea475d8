"""The market's API in-process on SQLite and PostgreSQL: offers, the book, quotes,
reservations (charged up front, in the ledger), credits, statements, earnings, and the
clear errors a client's mistakes get."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import delete, select, update

from crucible.protocol.accounts import Scope
from crucible.server.billing.entries import check_ledger
from crucible.server.store.tables import hosts, ledger_entries, ledger_postings, reservations

from server_testlib import MakeServer, ServerUnderTest, error_code

H100 = [
    {"index": i, "model": "H100", "memory_mib": 81920, "uuid": f"GPU-{i}", "fake": True}
    for i in range(2)
]


def _market(server: ServerUnderTest) -> tuple[str, str, str]:
    """A host with 2 H100 priced by its owner; returns (host id, owner token, renter token)."""
    host_token = server.tenant("hoster", Scope.HOST).token
    owner = server.tenant("hoster").token
    host_id = server.register_host(host_token, "gpu-1", gpus=H100)
    server.ok(
        "PUT",
        f"/v1/hosts/{host_id}/offers",
        token=owner,
        json={
            "device_type": "H100",
            "on_demand_micros": 2_000_000,
            "interruptible_min_micros": 800_000,
            "reserved_micros": 1_500_000,
        },
    )
    return host_id, owner, server.tenant("renter").token


def test_offers_are_public_and_priced_by_their_owner_only(server: ServerUnderTest) -> None:
    host_id, owner, renter = _market(server)
    [info] = server.ok("GET", "/v1/market/hosts", token=renter)
    h100, cpu = info["offers"]
    assert (h100["device_type"], h100["on_demand_micros"], h100["priced"]) == (
        "H100",
        2_000_000,
        True,
    )
    assert cpu["device_type"] == "cpu" and cpu["priced"] is False  # the exchange's default
    assert info["reliability"] == 1.0 and info["carbon_g_per_kwh"] is None

    body = {
        "device_type": "H100",
        "on_demand_micros": 1,
        "interruptible_min_micros": 1,
        "reserved_micros": 1,
    }
    r = server.request("PUT", f"/v1/hosts/{host_id}/offers", token=renter, json=body)
    assert r.status_code == 404 and error_code(r) == "not_found"  # not the renter's host
    r = server.request(
        "PUT", f"/v1/hosts/{host_id}/offers", token=owner, json={**body, "device_type": "B200"}
    )
    assert r.status_code == 400 and "has no 'B200'" in r.json()["error"]["message"]
    r = server.request(
        "PUT",
        f"/v1/hosts/{host_id}/offers",
        token=owner,
        json={**body, "memory_on_demand_micros": 5},
    )
    assert r.status_code == 400 and "memory is priced separately" in r.text
    r = server.request(
        "PUT", f"/v1/hosts/{host_id}/offers", token=owner, json={**body, "on_demand_micros": -1}
    )
    assert r.status_code == 400 and error_code(r) == "invalid_request"
    # A minimum bid above the ask is a typo (interruptible sells at or below on-demand).
    r = server.request(
        "PUT",
        f"/v1/hosts/{host_id}/offers",
        token=owner,
        json={**body, "on_demand_micros": 900_000, "interruptible_min_micros": 2_100_000},
    )
    assert r.status_code == 400 and error_code(r) == "invalid_request"
    assert "interruptible minimum ($2.10) is above the on-demand price ($0.90)" in r.text
    cpu_body = {**body, "device_type": "cpu", "memory_on_demand_micros": 5_000}
    r = server.request(
        "PUT",
        f"/v1/hosts/{host_id}/offers",
        token=owner,
        json={**cpu_body, "memory_interruptible_micros": 6_000},
    )
    assert r.status_code == 400 and "memory's interruptible minimum" in r.text
    server.ok("PUT", f"/v1/hosts/{host_id}/offers", token=owner, json=cpu_body)

    prof = server.ok(
        "PATCH",
        f"/v1/hosts/{host_id}/profile",
        token=owner,
        json={"energy_source": "hydro", "carbon_g_per_kwh": 24},
    )
    assert (prof["energy_source"], prof["carbon_g_per_kwh"]) == ("hydro", 24)


def test_quotes_say_what_a_request_costs_or_why_not(server: ServerUnderTest) -> None:
    host_id, owner, renter = _market(server)
    q = server.ok("POST", "/v1/market/quote", token=renter, json={"gpu": "2xH100"})
    assert q["available"] and q["price_micros"] == 2_000_000
    assert q["rate_micros_per_hour"] == 4_000_000 and q["hosts"] == [host_id]

    q = server.ok(
        "POST", "/v1/market/quote", token=renter, json={"gpu": "H100", "tier": "interruptible"}
    )
    assert q["available"] and q["price_micros"] == 800_000  # the host's minimum bid

    refusals = {
        "bid_too_low": {"gpu": "H100", "tier": "interruptible", "bid_micros": 100_000},
        "price": {"gpu": "H100", "max_price_micros": 1_000_000},
        "too_large": {"gpu": "4xH100"},
        "no_offer": {"gpu": "A100-80GB"},
        "filtered": {"gpu": "H100", "region": "mars"},
    }
    for code, body in refusals.items():
        q = server.ok("POST", "/v1/market/quote", token=renter, json=body)
        assert not q["available"] and q["refusal"] == code, (code, q)
        assert q["message"]

    r = server.request("POST", "/v1/market/quote", token=renter, json={"gpu": "Z9000"})
    assert r.status_code == 400 and error_code(r) == "invalid_gpu"
    # A region is named as hosts name theirs: one no host could have is refused, not matched
    # against nothing.
    body = {"gpu": "H100", "region": "eu\x1b[2J"}
    r = server.request("POST", "/v1/market/quote", token=renter, json=body)
    assert r.status_code == 400 and "region" in r.text and "control character" in r.text
    r = server.request("POST", "/v1/market/quote", token=renter, json={"gpu": "cpu"})
    assert r.status_code == 400 and "CPU-only capacity" in r.text
    r = server.request(
        "POST", "/v1/market/quote", token=renter, json={"gpu": "H100", "tier": "spot"}
    )
    assert r.status_code == 400
    # A bid with the on-demand tier was dropped in silence; and prices are in dollars.
    r = server.request(
        "POST", "/v1/market/quote", token=renter, json={"gpu": "H100", "bid_micros": 1}
    )
    assert r.status_code == 400 and "a bid is for tier=interruptible" in r.text, r.text
    body = {"gpu": "H100", "tier": "interruptible", "bid_micros": 2_000_000, "max_price_micros": 1}
    r = server.request("POST", "/v1/market/quote", token=renter, json=body)
    assert r.status_code == 400 and "the bid ($2.00" in r.text, r.text

    server.ok("PATCH", f"/v1/hosts/{host_id}/profile", token=owner, json={"draining": True})
    q = server.ok("POST", "/v1/market/quote", token=renter, json={"gpu": "H100"})
    assert not q["available"] and q["refusal"] == "no_offer"


def test_the_book_shows_asks_and_free_capacity(server: ServerUnderTest) -> None:
    _market(server)
    renter = server.tenant("renter").token
    [book] = server.ok("GET", "/v1/market/book?gpu=H100", token=renter)
    assert book["device_type"] == "H100" and book["free_devices"] == 2
    assert book["asks"] == [{"price_micros": 2_000_000, "devices": 2}]
    assert book["interruptible_minimums"] == [{"price_micros": 800_000, "devices": 2}]
    assert server.request("GET", "/v1/market/book").status_code == 401


def test_a_host_registered_through_another_replica_can_be_reserved_at_once(
    make_server: MakeServer,
) -> None:
    """The market learns of hosts at its scheduler's ticks. A host that registered through
    another replica is in the store before the leader's next tick: a reservation that finds
    no host for it reads the hosts again rather than refusing what is there."""
    leader, other = make_server(), make_server()
    renter = leader.tenant("renter").token
    q = leader.ok("POST", "/v1/market/quote", token=renter, json={"gpu": "2xH100"})
    assert not q["available"]  # the leader's market has read the store: no host yet
    host_id = other.register_host(other.tenant("hoster", Scope.HOST).token, "gpu-1", gpus=H100)
    start = int(time.time() * 1000) + 600_000
    r = leader.ok(
        "POST",
        "/v1/reservations",
        token=renter,
        json={"gpu": "2xH100", "start_ms": start, "hours": 1},
    )
    assert r["hosts"] == [host_id]


def test_a_reservation_is_charged_up_front_and_the_ledger_balances(
    server: ServerUnderTest,
) -> None:
    host_id, owner, renter = _market(server)
    start = int(time.time() * 1000) + 3_600_000
    r = server.ok(
        "POST",
        "/v1/reservations",
        token=renter,
        json={"gpu": "2xH100", "start_ms": start, "hours": 2},
    )
    assert r["hosts"] == [host_id] and r["price_micros"] == 1_500_000
    assert r["cost_micros"] == 2 * 2 * 1_500_000  # 2 devices x 2 hours
    assert [x["id"] for x in server.ok("GET", "/v1/reservations", token=renter)] == [r["id"]]
    # The bill counts container time; what reservations cost is beside it, not lost.
    bill = server.ok("GET", "/v1/bill", token=renter)
    assert (bill["total_micros"], bill["reservations_micros"]) == (0, 6_000_000)
    assert server.ok("GET", "/v1/bill", token=owner)["reservations_micros"] == 0

    # Its devices are pinned: nothing else can be had now.
    q = server.ok("POST", "/v1/market/quote", token=renter, json={"gpu": "H100"})
    assert not q["available"]
    r2 = server.request(
        "POST",
        "/v1/reservations",
        token=renter,
        json={"gpu": "H100", "start_ms": start, "hours": 1},
    )
    assert r2.status_code == 422 and error_code(r2) == "market_refused"

    with server.state.engine.connect() as conn:
        assert check_ledger(conn) == []
        postings = dict(
            conn.execute(select(ledger_postings.c.account, ledger_postings.c.amount_micros)).all()
        )
    renter_id = server.tenant("renter").account_id
    assert postings[f"renter:{renter_id}"] == -6_000_000
    assert postings["platform:fees"] == 600_000  # the 10 % default fee
    assert postings[f"host:{host_id}"] == 5_400_000

    earned = server.ok("GET", "/v1/earnings?by=day", token=owner)
    assert (earned["charged_micros"], earned["fee_micros"], earned["earned_micros"]) == (
        6_000_000,
        600_000,
        5_400_000,
    )
    assert server.ok("GET", "/v1/earnings", token=renter)["lines"] == []  # not its host
    [lease] = server.ok("GET", "/v1/earnings?by=lease", token=owner)["lines"]
    assert (lease["key"], lease["device_type"], lease["tier"]) == (r["id"], "H100", "reserved")

    csv_text = server.request(
        "GET", "/v1/statement?kind=entries&format=csv", token=renter
    ).text.splitlines()
    assert csv_text[0].startswith("seq,key,kind,at_ms") and len(csv_text) == 2
    apps = server.ok("GET", "/v1/statement?kind=apps", token=renter)
    assert apps == [
        {
            "app_id": "(reservations)",
            "app_name": None,
            "intervals": 1,
            "ms": 7_200_000,
            "cost_micros": 6_000_000,
            "energy_mwh": 0,  # a reservation's charge has no metered interval of its own
            "carbon_mg": 0,
        }
    ]
    bad = server.request("GET", "/v1/statement?kind=everything", token=renter)
    assert bad.status_code == 400
    bad = server.request("GET", "/v1/statement?format=xml", token=renter)
    assert bad.status_code == 400 and "format must be json or csv" in bad.text
    # Each entry says what it did to the balance (a grant's amount was nowhere).
    [entry] = server.ok("GET", "/v1/statement?kind=entries", token=renter)
    assert entry["amount_micros"] == -6_000_000 == -entry["cost_micros"]


def test_credits_are_granted_by_operators_and_capped_per_day(server: ServerUnderTest) -> None:
    admin = server.tenant("ops", Scope.ADMIN).token
    renter = server.tenant("renter")
    info = server.ok("GET", "/v1/credits", token=renter.token)
    assert info["balance_micros"] == 0 and not info["ok"] and "no credit" in info["reason"]
    if not info["required"]:  # not refused here: the reason must not say it is
        assert "work still runs" in info["reason"] and "refused" not in info["reason"], info

    r = server.request(
        "POST",
        "/v1/credits/grants",
        token=renter.token,
        json={"account": "renter", "amount_micros": 10**9},
    )
    assert r.status_code == 403 and error_code(r) == "forbidden"
    # A memo or key is shown to the account (statements, CSV): no terminal escapes in them.
    for field in ("memo", "key"):
        bad = {"account": "renter", "amount_micros": 1, field: "\x1b[31mRED\r"}
        r = server.request("POST", "/v1/credits/grants", token=admin, json=bad)
        assert r.status_code == 400 and field in r.text and "control character" in r.text
    body = {"account": "renter", "amount_micros": 25_000_000, "key": "welcome"}
    assert (
        server.ok("POST", "/v1/credits/grants", token=admin, json=body)["balance_micros"]
        == 25_000_000
    )
    [grant] = server.ok("GET", "/v1/statement", token=renter.token)
    assert (grant["kind"], grant["amount_micros"]) == ("grant", 25_000_000)
    # Idempotent: the same key grants once.
    assert (
        server.ok("POST", "/v1/credits/grants", token=admin, json=body)["balance_micros"]
        == 25_000_000
    )
    # Another grant under a used key is refused, not lost silently (the audit log listed a
    # $7 grant that never happened), and is not audited.
    r = server.request(
        "POST", "/v1/credits/grants", token=admin, json=body | {"amount_micros": 7_000_000}
    )
    assert r.status_code == 409 and "was used for another grant" in r.text, r.text
    assert server.ok("GET", "/v1/credits", token=renter.token)["balance_micros"] == 25_000_000
    audited = server.ok("GET", "/v1/audit?action=credits.grant", token=admin)["entries"]
    assert [e["detail"]["amount_micros"] for e in audited] == [25_000_000]
    r = server.request(
        "POST", "/v1/credits/grants", token=admin, json={"account": "nobody", "amount_micros": 1}
    )
    assert r.status_code == 404

    capped = server.ok(
        "PUT", "/v1/credits/cap", token=renter.token, json={"account": "renter", "cap_micros": 0}
    )
    assert capped["daily_cap_micros"] == 0 and not capped["ok"] and "cap" in capped["reason"]
    with server.state.engine.connect() as conn:
        assert check_ledger(conn) == []
        assert conn.execute(select(ledger_entries.c.kind)).scalars().all() == ["grant"]


@pytest.mark.parametrize(
    "body",
    [
        {"gpu": "H100", "start_ms": 0, "hours": 0},
        {"gpu": "H100", "start_ms": -5, "hours": 1},
        {"gpu": "H100", "start_ms": 0, "hours": 1, "max_price_micros": 10**12},
    ],
)
def test_bad_reservations_get_400(server: ServerUnderTest, body: dict[str, object]) -> None:
    renter = server.tenant("renter").token
    r = server.request("POST", "/v1/reservations", token=renter, json=body)
    assert r.status_code == 400 and error_code(r) == "invalid_request"


def test_a_reservation_in_the_past_says_so(server: ServerUnderTest) -> None:
    # It said "the window must end after it starts", which it did.
    renter = server.tenant("renter").token
    body = {"gpu": "H100", "start_ms": 946_684_800_000, "hours": 1}  # 2000-01-01
    r = server.request("POST", "/v1/reservations", token=renter, json=body)
    assert r.status_code == 400, r.text
    assert "ended at 2000-01-01 01:00 UTC, in the past" in r.json()["error"]["message"], r.text


def test_gpus_outside_the_catalog_are_not_on_the_market(server: ServerUnderTest) -> None:
    """A card the catalog does not know is listed under its driver's name, which can be
    longer than any market device type (the market listing answered 400 to every account
    once such a host registered) or a look-alike of a real model ('H100 '): no builder can
    ask for one, so it is left out of the market; the host's inventory still shows it."""
    host_token = server.tenant("hoster", Scope.HOST).token
    gpus = [
        H100[0],
        {
            "index": 1,
            "model": "NVIDIA GeForce RTX 4090 Laptop GPU",
            "memory_mib": 16376,
            "uuid": "GPU-1",
        },
        {"index": 2, "model": "H100 ", "memory_mib": 81920, "uuid": "GPU-2", "fake": True},
        {
            "index": 3,
            "model": "[link=http://evil.example]x[/link]",
            "memory_mib": 9,
            "uuid": "GPU-3",
        },
    ]
    host_id = server.register_host(host_token, "mixed", gpus=gpus)
    renter = server.tenant("renter").token
    [info] = server.ok("GET", "/v1/market/hosts", token=renter)
    assert [o["device_type"] for o in info["offers"]] == ["H100", "cpu"]
    assert {b["device_type"] for b in server.ok("GET", "/v1/market/book", token=renter)} == {"H100"}
    owner = server.tenant("hoster").token
    r = server.request(
        "PUT",
        f"/v1/hosts/{host_id}/offers",
        token=owner,
        json={
            "device_type": "H100 ",
            "on_demand_micros": 1,
            "interruptible_min_micros": 1,
            "reserved_micros": 1,
        },
    )
    assert r.status_code == 400 and "has no 'H100 '" in r.text
    [listed] = server.ok("GET", "/v1/hosts", token=owner)
    assert len(listed["inventory"]["gpus"]) == 4  # the inventory as declared


def test_an_owner_removes_a_host_whose_agent_stopped(server: ServerUnderTest) -> None:
    """Hosts stayed in every account's lists for good once registered; now their owner takes
    them off, when nothing runs or is reserved there, and registering again brings them back."""
    host_id, owner, renter = _market(server)
    r = server.request("DELETE", f"/v1/hosts/{host_id}", token=owner)
    assert r.status_code == 409 and "stop its agent first" in r.text
    r = server.request("DELETE", f"/v1/hosts/{host_id}", token=renter)
    assert r.status_code == 404  # not the renter's: as if it did not exist
    start = int(time.time() * 1000) + 3_600_000
    body = {"gpu": "H100", "start_ms": start, "hours": 1}
    server.ok("POST", "/v1/reservations", token=renter, json=body)
    with server.state.engine.begin() as conn:
        conn.execute(update(hosts).where(hosts.c.id == host_id).values(state="offline"))
    r = server.request("DELETE", f"/v1/hosts/{host_id}", token=owner)
    assert r.status_code == 409 and "reserved" in r.text
    with server.state.engine.begin() as conn:
        conn.execute(delete(reservations))
    assert server.request("DELETE", f"/v1/hosts/{host_id}", token=owner).status_code == 204
    assert server.request("DELETE", f"/v1/hosts/{host_id}", token=owner).status_code == 204
    assert server.ok("GET", "/v1/hosts", token=renter) == []
    assert server.ok("GET", "/v1/market/hosts", token=renter) == []
    admin = server.tenant("ops", Scope.ADMIN).token
    [removed] = server.ok("GET", "/v1/audit?action=host.remove", token=admin)["entries"]
    assert removed["target"] == host_id
    # The agent registers again: the same host, back on the exchange.
    assert server.register_host(server.tenant("hoster", Scope.HOST).token, "gpu-1", gpus=H100) == (
        host_id
    )
    assert [h["id"] for h in server.ok("GET", "/v1/hosts", token=renter)] == [host_id]
