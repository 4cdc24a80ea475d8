"""Grid carbon sources: a CSV time series and an HTTP endpoint the operator runs (a real one
on loopback), taken at the time of use, and the fallback to the declared figure when a source
fails or answers nonsense."""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from crucible.errors import InvalidRequestError
from crucible.protocol.accounts import Scope
from crucible.server.billing.grid_carbon import (
    CsvSeries,
    GridIntensity,
    HttpSource,
    SourceError,
    parse_sources,
)
from crucible.server.scheduler.loop import SchedulerLoop
from crucible.server.store.tables import meter_intervals

from server_testlib import MakeServer

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@dataclass
class FakeClock:
    ms: int = T0 + 30 * 60_000

    def now_ms(self) -> int:
        return self.ms


def test_sources_spec_is_parsed_with_clear_errors(tmp_path: Path) -> None:
    got = parse_sources(f" eu-north = {tmp_path}/g.csv ; us=http://127.0.0.1:9/ci ;")
    assert isinstance(got["eu-north"], CsvSeries) and isinstance(got["us"], HttpSource)
    assert parse_sources("") == {}
    for bad, says in [
        ("eu", "not region=source"),
        ("=x.csv", "not region=source"),
        ("eu=ftp://x", "a CSV path or an http(s) URL"),
        ("eu=a.csv;eu=b.csv", "twice"),
    ]:
        with pytest.raises(InvalidRequestError, match=re.escape(says)):
            parse_sources(bad)


def test_a_csv_series_is_a_step_function_over_time(tmp_path: Path) -> None:
    f = tmp_path / "grid.csv"
    f.write_text(
        "time,g_per_kwh\n"
        "2026-01-01T01:00:00Z,250\n"
        f"{T0},300\n"  # epoch milliseconds, out of order
        "2026-01-01T02:00:00+00:00,120.4\n"
    )
    s = CsvSeries(f)
    assert s.at(T0) == 300
    assert s.at(T0 + 3_599_999) == 300
    assert s.at(T0 + 3_600_000) == 250
    assert s.at(T0 + 10 * 3_600_000) == 120
    with pytest.raises(SourceError, match="no row at or before now"):
        s.at(T0 - 1)
    f.write_text("2026-01-01T00:00:00Z,-40\n")
    with pytest.raises(SourceError, match=r"outside 0\.\.5000"):
        CsvSeries(f).at(T0)
    f.write_text("2026-01-01T00:00:00Z,lots\n")
    with pytest.raises(SourceError, match="not a number"):
        CsvSeries(f).at(T0)
    with pytest.raises(SourceError, match="cannot read"):
        CsvSeries(tmp_path / "missing.csv").at(T0)


class _Answers(http.server.BaseHTTPRequestHandler):
    body = b'{"carbon_g_per_kwh": 95}'

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(type(self).body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def grid_server() -> Iterator[tuple[str, type[_Answers]]]:
    handler = type("Answers", (_Answers,), {})
    srv = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}/intensity", handler
    finally:
        srv.shutdown()
        srv.server_close()


def test_an_http_source_and_its_nonsense(grid_server: tuple[str, type[_Answers]]) -> None:
    url, handler = grid_server
    grid = GridIntensity({"eu": HttpSource(url)}, refresh_ms=60_000)
    assert grid.due(T0)
    assert grid.read(T0)["eu"].g_per_kwh == 95
    assert not grid.due(T0 + 59_999) and grid.due(T0 + 60_000)
    for body, says in [
        (b"72", None),
        (b"-3", "outside 0..5000"),
        (b"99999", "outside 0..5000"),
        (b"<html>", "not JSON"),
        (b'{"carbon": 5}', "not a number"),
        (b"true", "not a number"),
    ]:
        handler.body = body
        r = grid.read(T0)["eu"]
        if says is None:
            assert r.g_per_kwh == 72 and r.note is None
        else:
            assert r.g_per_kwh is None and r.note is not None and says in r.note
            assert "using the declared figure" in r.note
    dead = GridIntensity({"eu": HttpSource("http://127.0.0.1:9/none")}, 1).read(T0)["eu"]
    assert dead.g_per_kwh is None and dead.note is not None and "failed" in dead.note
    # the note is shown to every tenant: it never names the operator's endpoint
    assert "127.0.0.1:9" not in dead.note


def test_the_grid_figure_is_billed_and_a_failing_source_falls_back_visibly(
    make_server: MakeServer, tmp_path: Path
) -> None:
    grid = tmp_path / "eu.csv"
    grid.write_text(f"{T0},120\n")
    server = make_server(carbon_sources=f"eu={grid}", carbon_refresh_s=60.0)
    clock = FakeClock()
    server.state.clock = clock
    renter = server.tenant("renter")
    owner = server.tenant("owner", Scope.HOST)
    body = {
        "name": "h",
        "region": "eu",
        "carbon_g_per_kwh": 400,
        "inventory": {"cpu_cores": 8, "memory_mib": 16384, "disk_mib": 0},
    }
    host_id = server.ok("POST", "/v1/hosts/register", token=owner.token, json=body)["id"]
    app_id = server.new_app(renter.token)
    fid = server.new_function(renter.token, app_id, server.put_blob(renter.token))
    loop = SchedulerLoop(server.state)
    loop.tick()  # reads the source and puts the region's figure on its hosts
    cid, _ = server.place_container(fid, host_id)

    def sync(seq: int, **report: object) -> None:
        rep = {"container_id": cid, **report}
        server.ok(
            "POST",
            f"/v1/hosts/{host_id}/sync",
            token=owner.token,
            json={"containers": [rep], "wait_s": 0, "seq": seq},
        )

    def host() -> dict[str, object]:
        [h] = [h for h in server.ok("GET", "/v1/hosts", token=renter.token) if h["id"] == host_id]
        return h

    h = host()
    assert (h["carbon_g_per_kwh"], h["carbon_source"], h["carbon_note"]) == (120, "grid", None)
    assert h["declared_carbon_g_per_kwh"] == 400
    sync(1, state="running", pid=1, energy_mwh=0)
    clock.ms += 400_000
    sync(2, state="exited", exit_code=0, reason="exited", energy_mwh=5_000)
    with server.state.engine.connect() as conn:
        rows = conn.execute(select(meter_intervals).where(meter_intervals.c.container_id == cid))
        got = [(r.carbon_g_per_kwh, r.energy_mwh, r.carbon_mg) for r in rows]
    assert sum(e for _, e, _ in got) == 5_000
    assert {g for g, _, _ in got} == {120}
    assert sum(c for _, _, c in got) == 600  # 5 Wh at 120 g/kWh

    # The source starts answering nonsense: the declared figure applies, and the host says why.
    grid.write_text(f"{T0},-7\n")
    clock.ms += 60_000
    loop.tick()
    h = host()
    assert (h["carbon_g_per_kwh"], h["carbon_source"]) == (400, "declared")
    assert "outside 0..5000" in str(h["carbon_note"])
    assert str(tmp_path) not in str(h["carbon_note"])


def test_a_malformed_sources_setting_stops_the_server_at_start(make_server: MakeServer) -> None:
    with pytest.raises(InvalidRequestError, match="CRUCIBLE_CARBON_SOURCES"):
        make_server(carbon_sources="eu-north")
