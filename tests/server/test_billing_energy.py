"""Energy and carbon beside cost: from the agent's container reports, through the metered
intervals, to the bill, the statements, a call's timeline, host earnings and host status.

The real app in-process on SQLite and PostgreSQL; only the clock is injected."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from crucible.core.metering import (
    carbon_mg,
    energy_split,
    estimated_energy_mwh,
    estimated_watts,
)
from crucible.protocol.accounts import Scope
from crucible.server.store.tables import meter_intervals

from server_testlib import MakeServer, ServerUnderTest


@dataclass
class FakeClock:
    ms: int = 1_700_000_000_000

    def now_ms(self) -> int:
        return self.ms


# -- the pure core ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, database=None)
@given(
    total=st.integers(-10, 10**12),
    lengths=st.lists(st.integers(0, 10**7), min_size=1, max_size=20),
)
def test_energy_split_adds_up_exactly_and_never_goes_negative(
    total: int, lengths: list[int]
) -> None:
    start = 0
    intervals = []
    for n in lengths:
        intervals.append((start, start + n))
        start += n
    parts = energy_split(total, intervals)
    assert sum(parts) == max(0, total)
    assert all(p >= 0 for p in parts)


def test_energy_estimates_and_carbon_arithmetic() -> None:
    # One H100 (700 W) and 2 cores at 10 W for an hour: 720 Wh.
    watts = estimated_watts(700, 1, 2.0, 10.0)
    assert watts == 720.0
    assert estimated_energy_mwh(watts, 0, 0, 3_600_000) == 720_000
    # Split into pieces, it adds up to the whole (no drift).
    pieces = [estimated_energy_mwh(watts, 0, t, t + 7) for t in range(0, 3_600_000, 7)][:-1]
    pieces.append(estimated_energy_mwh(watts, 0, 3_599_995, 3_600_000))
    assert sum(pieces) == 720_000
    # 720 Wh at 400 gCO2/kWh = 288 g = 288,000 mg; undeclared intensity counts nothing.
    assert carbon_mg(720_000, 400) == 288_000
    assert carbon_mg(720_000, None) == 0
    assert carbon_mg(1, 499) == 0 and carbon_mg(1, 500) == 1  # half up


# -- through the API ----------------------------------------------------------------------------


def _setup(server: ServerUnderTest, carbon: int | None = 400) -> tuple[str, str, str, str, str]:
    """A renter with a function, a host declaring ``carbon`` gCO2/kWh, and a container of the
    function placed on it. Returns (renter token, host token, host id, function id, container
    id)."""
    renter = server.tenant("renter")
    owner = server.tenant("owner", Scope.HOST)
    body: dict[str, object] = {
        "name": "host-a",
        "inventory": {"cpu_cores": 8, "memory_mib": 16384, "disk_mib": 0},
    }
    if carbon is not None:
        body["carbon_g_per_kwh"] = carbon
    host_id = server.ok("POST", "/v1/hosts/register", token=owner.token, json=body)["id"]
    app_id = server.new_app(renter.token)
    fid = server.new_function(renter.token, app_id, server.put_blob(renter.token))
    cid, _ = server.place_container(fid, host_id)
    return renter.token, owner.token, host_id, fid, cid


def _sync(
    server: ServerUnderTest,
    token: str,
    host_id: str,
    seq: int,
    *reports: dict[str, object],
    dropped: int | None = None,
) -> None:
    body: dict[str, object] = {"containers": list(reports), "wait_s": 0, "seq": seq}
    if dropped is not None:
        body["energy_readings_dropped"] = dropped
    server.ok("POST", f"/v1/hosts/{host_id}/sync", token=token, json=body)


def test_reported_energy_is_metered_billed_and_shown_everywhere(make_server: MakeServer) -> None:
    server = make_server()
    clock = FakeClock()
    server.state.clock = clock
    renter, host_token, host_id, fid, cid = _setup(server, carbon=400)
    t0 = clock.ms
    _sync(
        server,
        host_token,
        host_id,
        1,
        {"container_id": cid, "state": "running", "pid": 1, "energy_mwh": 0},
    )
    clock.ms = t0 + 150_000
    _sync(
        server,
        host_token,
        host_id,
        2,
        {"container_id": cid, "state": "running", "pid": 1, "energy_mwh": 1_200},
        dropped=3,
    )
    # A stale report (an older seq racing a newer one) never lowers what was reported.
    _sync(
        server,
        host_token,
        host_id,
        1,
        {"container_id": cid, "state": "running", "pid": 1, "energy_mwh": 5},
    )
    clock.ms = t0 + 250_000
    _sync(
        server,
        host_token,
        host_id,
        3,
        {
            "container_id": cid,
            "state": "exited",
            "exit_code": 0,
            "reason": "exited",
            "energy_mwh": 2_500,
        },
    )

    with server.state.engine.connect() as conn:
        rows = conn.execute(
            select(meter_intervals).where(meter_intervals.c.container_id == cid)
        ).all()
    assert sum(r.energy_mwh for r in rows) == 2_500
    assert sum(r.carbon_mg for r in rows) == 1_000  # 2.5 Wh at 400 g/kWh = 1 g
    assert all(r.carbon_g_per_kwh == 400 and not r.energy_estimated for r in rows)
    assert sum(r.end_ms - r.start_ms for r in rows) == 250_000

    bill = server.ok("GET", "/v1/bill", token=renter)
    [line] = bill["lines"]
    assert (line["function_id"], line["energy_mwh"], line["carbon_mg"]) == (fid, 2_500, 1_000)
    assert line["energy_estimated"] is False
    assert (bill["total_energy_mwh"], bill["total_carbon_mg"]) == (2_500, 1_000)

    entries = server.ok("GET", "/v1/statement?kind=entries", token=renter)
    charges = [e for e in entries if e["kind"] == "charge"]
    assert charges and sum(e["energy_mwh"] for e in charges) == 2_500
    assert sum(e["carbon_mg"] for e in charges) == 1_000
    per_app = server.ok("GET", "/v1/statement?kind=apps", token=renter)
    assert [(a["energy_mwh"], a["carbon_mg"]) for a in per_app] == [(2_500, 1_000)]
    text = server.request("GET", "/v1/statement?kind=apps&format=csv", token=renter).text
    [row] = list(csv.DictReader(io.StringIO(text)))
    assert (row["energy_mwh"], row["carbon_mg"]) == ("2500", "1000")

    owner_user = server.tenant("owner").token  # the host owner's user token
    earned = server.ok("GET", "/v1/earnings?by=lease", token=owner_user)
    assert (earned["energy_mwh"], earned["carbon_mg"]) == (2_500, 1_000)
    [host] = [h for h in server.ok("GET", "/v1/hosts", token=renter) if h["id"] == host_id]
    assert host["energy_readings_dropped"] == 3
    assert (host["carbon_g_per_kwh"], host["carbon_source"]) == (400, "declared")

    # Another tenant sees none of it.
    stranger = server.tenant("stranger")
    assert server.ok("GET", "/v1/bill", token=stranger.token)["lines"] == []
    assert server.ok("GET", "/v1/statement?kind=entries", token=stranger.token) == []


def test_a_call_shows_its_share_of_the_containers_energy(make_server: MakeServer) -> None:
    server = make_server()
    clock = FakeClock()
    server.state.clock = clock
    renter, host_token, host_id, fid, cid = _setup(server, carbon=200)
    [call_id] = server.new_calls(renter, fid)
    t0 = clock.ms
    _sync(server, host_token, host_id, 1, {"container_id": cid, "state": "running", "pid": 1})
    _, ctoken = cid, None
    from crucible.server.auth import container_token

    ctoken = container_token(server.state.secret, cid)
    got = server.ok(
        "POST", f"/v1/containers/{cid}/exchange", token=ctoken, json={"want": 1, "wait_s": 0}
    )
    assert [i["call_id"] for i in got["inputs"]] == [call_id]
    clock.ms = t0 + 100_000
    server.ok(
        "POST",
        f"/v1/containers/{cid}/exchange",
        token=ctoken,
        json={
            "outputs": [
                {
                    "call_id": call_id,
                    "attempt": 1,
                    "status": "succeeded",
                    "result": {"data": "gAQ=", "size": 3},
                    "exec_us": 50_000_000,
                }
            ],
            "want": 0,
            "wait_s": 0,
        },
    )
    clock.ms = t0 + 200_000
    _sync(
        server,
        host_token,
        host_id,
        2,
        {
            "container_id": cid,
            "state": "exited",
            "exit_code": 0,
            "reason": "exited",
            "energy_mwh": 4_000,
        },
    )
    timeline = server.ok("GET", f"/v1/calls/{call_id}/timeline", token=renter)
    # It ran 50 s of the container's 200 s: a quarter of 4 Wh, at 200 g/kWh.
    assert timeline["energy_mwh"] == 1_000
    assert timeline["carbon_mg"] == 200
    [row] = server.ok("GET", "/v1/statement?kind=calls", token=renter)
    assert (row["energy_mwh"], row["carbon_mg"]) == (1_000, 200)


def test_an_agent_that_reports_no_energy_is_estimated_from_the_catalog(
    make_server: MakeServer,
) -> None:
    server = make_server()
    clock = FakeClock()
    server.state.clock = clock
    renter, host_token, host_id, _fid, cid = _setup(server, carbon=None)
    t0 = clock.ms
    _sync(server, host_token, host_id, 1, {"container_id": cid, "state": "running", "pid": 1})
    clock.ms = t0 + 36_000
    _sync(
        server,
        host_token,
        host_id,
        2,
        {"container_id": cid, "state": "exited", "exit_code": 0, "reason": "exited"},
    )
    [line] = server.ok("GET", "/v1/bill", token=renter)["lines"]
    # 0.25 reserved cores at 10 W for 36 s = 2.5 W x 0.01 h = 25 mWh; no intensity declared.
    assert (line["energy_mwh"], line["carbon_mg"], line["energy_estimated"]) == (25, 0, True)


def test_absurd_energy_reports_are_refused_with_a_clear_error(make_server: MakeServer) -> None:
    server = make_server()
    _renter, host_token, host_id, _fid, cid = _setup(server)
    r = server.request(
        "POST",
        f"/v1/hosts/{host_id}/sync",
        token=host_token,
        json={"containers": [{"container_id": cid, "state": "running", "energy_mwh": -5}]},
    )
    assert r.status_code == 400
    assert "energy_mwh" in r.text


def test_a_host_cannot_bill_more_energy_than_its_devices_can_draw(make_server: MakeServer) -> None:
    server = make_server()
    clock = FakeClock()
    server.state.clock = clock
    renter, host_token, host_id, _fid, cid = _setup(server, carbon=400)
    t0 = clock.ms
    _sync(server, host_token, host_id, 1, {"container_id": cid, "state": "running", "pid": 1})
    clock.ms = t0 + 36_000
    exited = {"container_id": cid, "state": "exited", "exit_code": 0, "reason": "exited"}
    _sync(server, host_token, host_id, 2, {**exited, "energy_mwh": 10**12})
    [line] = server.ok("GET", "/v1/bill", token=renter)["lines"]
    # A CPU-only container, counted at 8 cores x 10 W, twice over: 160 W for 36 s = 1.6 Wh.
    assert line["energy_mwh"] == 1_600
    assert 640 <= line["carbon_mg"] <= 644  # 0.64 g, rounded half up in each of 4 intervals


def test_a_host_cannot_report_less_energy_than_its_gpus_draw_idle(
    make_server: MakeServer,
) -> None:
    """A host reporting 0 energy for a GPU container zeroed the renter's emissions (and its
    own) on every bill and statement: a GPU held by a container draws at least its idle
    power, half of which is the floor."""
    from sqlalchemy import update

    from crucible.server.store.tables import containers

    server = make_server()
    clock = FakeClock()
    server.state.clock = clock
    renter, host_token, host_id, _fid, cid = _setup(server, carbon=400)
    with server.state.engine.begin() as conn:
        conn.execute(
            update(containers)
            .where(containers.c.id == cid)
            .values(gpu_model="H100", gpu_indices=[0, 1])
        )
    t0 = clock.ms
    _sync(server, host_token, host_id, 1, {"container_id": cid, "state": "running", "pid": 1})
    clock.ms = t0 + 36_000
    exited = {"container_id": cid, "state": "exited", "exit_code": 0, "reason": "exited"}
    _sync(server, host_token, host_id, 2, {**exited, "energy_mwh": 0})
    [line] = server.ok("GET", "/v1/bill", token=renter)["lines"]
    # Two H100 at half their 80 W idle: 80 W for 36 s = 0.8 Wh, at 400 g/kWh 0.32 g.
    assert line["energy_mwh"] == 800
    assert 320 <= line["carbon_mg"] <= 324
