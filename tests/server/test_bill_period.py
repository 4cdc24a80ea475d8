"""A bill and a statement over a period (`crucible bill --since/--until`): intervals count by
their start, calls by their submission, ledger entries by when they were posted; an empty or
impossible period is a 400 that says why. The clock is injected."""

from __future__ import annotations

from server_testlib import MakeServer, error_code, metered_container

T0 = 1_800_000_000_000


def test_a_bill_and_a_statement_cover_the_period_asked(make_server: MakeServer) -> None:
    m = metered_container(make_server(meter_interval_s=10), T0)
    server, renter = m.server, m.renter
    for _ in range(31):  # 30 s of running, metered in 10 s intervals
        m.report()
        m.loop.tick()
        m.clock.now += 1_000

    def bill(query: str) -> tuple[int, int, int]:
        b = server.ok("GET", f"/v1/bill{query}", token=renter)
        ms = sum(line["container_ms"] for line in b["lines"])
        calls = sum(line["calls"] for line in b["lines"])
        return ms, calls, b["total_micros"]

    everything = bill("")
    assert everything[:2] == (30_000, 1) and everything[2] > 0
    assert bill(f"?since_ms={T0 - 60_000}&until_ms={T0 + 3_600_000}") == everything
    later = bill(f"?since_ms={T0 + 10_000}")
    assert later[:2] == (20_000, 0)  # the call was submitted before the period
    earlier = bill(f"?until_ms={T0 + 10_000}")
    assert earlier[:2] == (10_000, 1)
    assert later[2] + earlier[2] == everything[2]
    b = server.ok("GET", f"/v1/bill?since_ms={T0}", token=renter)
    assert (b["since_ms"], b["until_ms"]) == (T0, None)

    entries = server.ok("GET", "/v1/statement?kind=entries", token=renter)
    assert entries and all(e["at_ms"] >= T0 for e in entries)
    cut = entries[len(entries) // 2]["at_ms"]
    after = server.ok("GET", f"/v1/statement?kind=entries&since_ms={cut}", token=renter)
    assert after and all(e["at_ms"] >= cut for e in after) and len(after) < len(entries)
    calls = server.ok("GET", f"/v1/statement?kind=calls&since_ms={T0 + 1}", token=renter)
    assert calls == []

    for query, words in [
        (f"?since_ms={T0}&until_ms={T0}", "the period is empty"),
        # past year 9999: no date to show, and still the client's mistake (it was a 500)
        ("?since_ms=9007199254740991&until_ms=0", "since_ms (9007199254740991 ms)"),
        ("?since_ms=5&until_ms=1", "since_ms (5 ms, 1970-01-01 00:00:00 UTC)"),
        ("?since_ms=-5", "since_ms"),
        (f"?until_ms={2**60}", "until_ms"),
    ]:
        for path in ("/v1/bill", "/v1/statement"):
            r = server.request("GET", path + query, token=renter)
            assert r.status_code == 400 and error_code(r) == "invalid_request", r.text
            assert words in r.json()["error"]["message"]
    r = server.request("GET", "/v1/bill?since_ms=yesterday", token=renter)
    assert r.status_code == 400 and "since_ms" in r.text
