"""Containers on a host that goes silent are billed up to the host's last sync (the last
moment it was known alive), not up to when it is declared lost, with the clock injected; the
ledger still balances. (The review saw ~15 s of dead time billed per container.)"""

from __future__ import annotations

from sqlalchemy import func, select

from crucible.server.billing.entries import check_ledger
from crucible.server.store.tables import containers, meter_intervals

from server_testlib import MakeServer, metered_container

T0 = 1_800_000_000_000


def test_a_lost_hosts_containers_are_billed_to_its_last_sync(make_server: MakeServer) -> None:
    m = metered_container(make_server(host_timeout_s=15, meter_interval_s=10), T0)
    server, clock, loop, cid = m.server, m.clock, m.loop, m.container_id
    host_id, host_token, renter = m.host_id, m.host_token, m.renter
    assert cid is not None

    def sync() -> None:
        report = {"containers": [{"container_id": cid, "state": "running"}]}
        server.ok("POST", f"/v1/hosts/{host_id}/sync", token=host_token, json=report)

    sync()  # the container started at T0
    for _ in range(7):  # alive for 7 s, syncing every second
        clock.now += 1_000
        sync()
        loop.tick()
    last_alive = clock.now
    # Then silence: the scheduler ticks on, metering what is due, until the host is lost.
    for _ in range(20):
        clock.now += 1_000
        loop.tick()
    with server.state.engine.connect() as conn:
        ct = conn.execute(select(containers).where(containers.c.id == cid)).one()
        assert (ct.state, ct.exit_reason) == ("stopped", "host_lost")
        assert (ct.started_ms, ct.stopped_ms) == (T0, last_alive)
        billed_ms = conn.execute(
            select(func.sum(meter_intervals.c.end_ms - meter_intervals.c.start_ms)).where(
                meter_intervals.c.container_id == cid
            )
        ).scalar()
        assert billed_ms == 7_000  # was 22_000: the 15 s of silence billed too
        last_end = conn.execute(
            select(func.max(meter_intervals.c.end_ms)).where(meter_intervals.c.container_id == cid)
        ).scalar()
        assert last_end == last_alive
        assert check_ledger(conn) == []
    bill = server.ok("GET", "/v1/bill", token=renter)
    [line] = bill["lines"]
    assert line["container_ms"] == 7_000 and line["cost_micros"] == bill["total_micros"] > 0


def test_a_host_that_comes_back_before_it_is_lost_is_billed_for_the_gap(
    make_server: MakeServer,
) -> None:
    """Metering waits for the host's next sync; when it comes, the time is billed (the
    container was alive after all)."""
    m = metered_container(make_server(host_timeout_s=15, meter_interval_s=10), T0)
    server, clock, loop, cid = m.server, m.clock, m.loop, m.container_id
    host_id, host_token = m.host_id, m.host_token
    report = {"containers": [{"container_id": cid, "state": "running"}]}
    server.ok("POST", f"/v1/hosts/{host_id}/sync", token=host_token, json=report)
    clock.now += 12_000  # silent for 12 s: not lost yet, nothing billed past T0
    loop.tick()
    with server.state.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(meter_intervals)).scalar() == 0
    clock.now += 1_000
    server.ok("POST", f"/v1/hosts/{host_id}/sync", token=host_token, json=report)
    loop.tick()
    with server.state.engine.connect() as conn:
        billed = conn.execute(
            select(func.sum(meter_intervals.c.end_ms - meter_intervals.c.start_ms))
        ).scalar()
        assert billed == 10_000  # one whole interval, now that the host vouched for it
        assert check_ledger(conn) == []
