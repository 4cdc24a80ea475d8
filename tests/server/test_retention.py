"""Retention: old calls (with their items), log lines and metered intervals are pruned by
the scheduler's housekeeping, in bounded batches; ledger entries stay and statements,
earnings and balances read the same before and after; blobs nothing references are
collected after a grace, and referenced or fresh ones are kept.

The real app in-process on SQLite and PostgreSQL; only the clock is injected."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from crucible.protocol.accounts import Scope
from crucible.server.scheduler.loop import SchedulerLoop
from crucible.server.services.deployments import retire_drained_versions
from crucible.server.services.retention import prune_calls, prune_logs
from crucible.server.store.tables import (
    call_items,
    calls,
    ledger_entries,
    log_lines,
    meter_intervals,
)

from server_testlib import MakeServer, ServerUnderTest

DAY_MS = 86_400_000


@dataclass
class FakeClock:
    ms: int = 1_700_000_000_000

    def now_ms(self) -> int:
        return self.ms


def _sync(server: ServerUnderTest, token: str, host_id: str, seq: int, **report: Any) -> None:
    body = {"containers": [report], "wait_s": 0, "seq": seq}
    server.ok("POST", f"/v1/hosts/{host_id}/sync", token=token, json=body)


def _count(server: ServerUnderTest, table: Any) -> int:
    with server.state.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _blob(server: ServerUnderTest, token: str, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    server.ok("PUT", f"/v1/blobs/{sha}", token=token, content=data)
    return sha


def _run_calls(server: ServerUnderTest, clock: FakeClock) -> dict[str, Any]:
    """A renter's function runs three calls on a host's container (one yields items, one
    returns a blob, all print), is metered with reported energy, and exits; a fourth call
    stays queued. Returns what the test needs."""
    renter = server.tenant("renter")
    owner = server.tenant("owner", Scope.HOST)
    host = server.ok(
        "POST",
        "/v1/hosts/register",
        token=owner.token,
        json={
            "name": "host-a",
            "inventory": {"cpu_cores": 8, "memory_mib": 16384, "disk_mib": 0},
            "carbon_g_per_kwh": 400,
        },
    )["id"]
    app_id = server.new_app(renter.token)
    bundle = server.put_blob(renter.token)
    fid = server.new_function(renter.token, app_id, bundle)
    cid, ctoken = server.place_container(fid, host)
    _sync(server, owner.token, host, 1, container_id=cid, state="running", pid=1, energy_mwh=0)
    ids = server.new_calls(renter.token, fid, n=3)
    got = server.ok(
        "POST",
        f"/v1/containers/{cid}/exchange",
        token=ctoken,
        json={"outputs": [], "want": 3, "wait_s": 0},
    )
    assert sorted(i["call_id"] for i in got["inputs"]) == sorted(ids)
    big = _blob(server, ctoken, b"a result too large to keep inline " * 100)
    small = base64.b64encode(b"ok").decode()
    server.ok(
        "POST",
        f"/v1/containers/{cid}/items",
        token=ctoken,
        json={"call_id": ids[0], "attempt": 1, "start": 0, "items": [{"data": small, "size": 2}]},
    )
    lines = [{"ts_ms": clock.ms, "call_id": i, "stream": "stdout", "line": "hi"} for i in ids]
    logged = server.request(
        "POST", f"/v1/containers/{cid}/logs", token=ctoken, json={"lines": lines}
    )
    assert logged.status_code == 204, logged.text
    outputs = [
        {
            "call_id": ids[0],
            "attempt": 1,
            "status": "succeeded",
            "result": {"data": small, "size": 2},
            "exec_us": 1000,
        },
        {
            "call_id": ids[1],
            "attempt": 1,
            "status": "succeeded",
            "result": {"ref": big, "size": 3400},
            "exec_us": 1000,
        },
        {
            "call_id": ids[2],
            "attempt": 1,
            "status": "succeeded",
            "result": {"data": small, "size": 2},
            "exec_us": 1000,
        },
    ]
    server.ok(
        "POST",
        f"/v1/containers/{cid}/exchange",
        token=ctoken,
        json={"outputs": outputs, "want": 0, "wait_s": 0},
    )
    clock.ms += 150_000
    _sync(server, owner.token, host, 2, container_id=cid, state="running", pid=1, energy_mwh=900)
    clock.ms += 100_000
    _sync(
        server,
        owner.token,
        host,
        3,
        container_id=cid,
        state="exited",
        exit_code=0,
        reason="exited",
        energy_mwh=2_500,
    )
    [queued] = server.new_calls(renter.token, fid, n=1)
    return {
        "renter": renter.token,
        "owner": owner.token,
        "app": app_id,
        "ids": ids,
        "queued": queued,
        "bundle": bundle,
        "big": big,
    }


def _statements(server: ServerUnderTest, t: dict[str, Any]) -> dict[str, Any]:
    renter, owner = t["renter"], server.tenant("owner").token
    return {
        "entries": server.ok("GET", "/v1/statement?kind=entries", token=renter),
        "apps": server.ok("GET", "/v1/statement?kind=apps", token=renter),
        "csv": server.request("GET", "/v1/statement?kind=entries&format=csv", token=renter).text,
        "credit": server.ok("GET", "/v1/credits", token=renter)["balance_micros"],
        "earnings": server.ok("GET", "/v1/earnings?by=lease", token=owner),
        "earnings_by_day": server.ok("GET", "/v1/earnings?by=day", token=owner),
    }


def test_retention_prunes_old_rows_and_statements_stay_the_same(make_server: MakeServer) -> None:
    server = make_server()
    clock = FakeClock()
    server.state.clock = clock
    t = _run_calls(server, clock)
    before = _statements(server, t)
    charges = [e for e in before["entries"] if e["kind"] == "charge"]
    assert charges and sum(e["energy_mwh"] for e in charges) == 2_500  # something to keep
    assert _count(server, meter_intervals) > 0 and _count(server, log_lines) == 3
    assert server.state.blobs.exists(t["big"])

    loop = SchedulerLoop(server.state)
    # Young rows: nothing goes.
    assert loop.retention(clock.ms).total == 0
    assert server.ok("GET", "/v1/bill", token=t["renter"]).get("kept_from_ms") is None

    clock.ms += 100 * DAY_MS  # past every default window (30, 30 and 90 days; 24 h grace)
    fresh = _blob(server, t["renter"], b"uploaded just now, not referenced yet")
    done = loop.retention(clock.ms)
    assert (done.calls, done.items, done.logs) == (3, 1, 3)
    assert done.intervals > 0 and done.blobs == 1  # the big result only

    for call_id in t["ids"]:
        assert server.request("GET", f"/v1/calls/{call_id}", token=t["renter"]).status_code == 404
    assert server.ok("GET", f"/v1/calls/{t['queued']}", token=t["renter"])["state"] == "queued"
    assert _count(server, call_items) == 0 and _count(server, log_lines) == 0
    assert _count(server, meter_intervals) == 0
    assert _count(server, calls) == 1  # the queued call
    assert not server.state.blobs.exists(t["big"])
    assert server.state.blobs.exists(t["bundle"])  # the function's code
    assert server.state.blobs.exists(fresh)  # within its grace
    with server.state.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ledger_entries)).scalar_one() >= len(
            charges
        )

    # The ledger is whole: statements, the balance and host earnings read the same.
    assert _statements(server, t) == before
    # The bill sums the intervals kept, and says from when (probe3 F10: a bare $0 total).
    bill = server.ok("GET", "/v1/bill", token=t["renter"])
    assert bill["total_micros"] == 0 and bill["kept_from_ms"] == clock.ms - 90 * DAY_MS
    since = clock.ms - DAY_MS
    recent = server.ok("GET", f"/v1/bill?since_ms={since}", token=t["renter"])
    assert recent["kept_from_ms"] is None
    # A second pass finds nothing more.
    assert loop.retention(clock.ms).total == 0


def test_retention_kept_forever_when_set_to_zero(make_server: MakeServer) -> None:
    server = make_server(
        retention_calls_days=0,
        retention_logs_days=0,
        retention_meter_days=0,
        blob_gc_grace_hours=0,
    )
    clock = FakeClock()
    server.state.clock = clock
    t = _run_calls(server, clock)
    server.ok("POST", f"/v1/apps/{t['app']}/stop", token=t["renter"])
    clock.ms += 1000 * DAY_MS
    assert SchedulerLoop(server.state).retention(clock.ms).total == 0
    assert server.ok("GET", f"/v1/calls/{t['ids'][1]}", token=t["renter"])["state"] == "succeeded"
    assert server.state.blobs.exists(t["big"]) and server.state.blobs.exists(t["bundle"])
    assert server.ok("GET", f"/v1/apps/{t['app']}", token=t["renter"])["functions"] == 1


def _deployed_versions(server: ServerUnderTest, token: str) -> list[str]:
    """Two versions of deployment "svc", each with code of its own; version 2 is current and
    version 1, drained, is stopped. Returns their bundles."""
    bundles = []
    for n in (1, 2):
        started = server.ok("POST", "/v1/deployments", token=token, json={"name": "svc"})
        bundles.append(server.put_blob(token, f"version {n} of the code".encode()))
        server.new_function(token, started["app_id"], bundles[-1])
        server.ok(
            "POST", "/v1/deployments/svc/activate", token=token, json={"app_id": started["app_id"]}
        )
    with server.state.engine.begin() as conn:
        assert len(retire_drained_versions(conn, server.state.clock.now_ms())) == 1
    return bundles


def test_stopped_apps_go_with_their_functions_and_their_code_is_collected(
    make_server: MakeServer,
) -> None:
    server = make_server()
    clock = FakeClock()
    server.state.clock = clock
    t = _run_calls(server, clock)  # an app that ran a container, was metered and charged
    renter = t["renter"]
    # The edited code runs again, in an app still running.
    again = server.new_app(renter, "again")
    again_bundle = server.put_blob(renter, b"the edited code")
    server.new_function(renter, again, again_bundle)
    # An app whose call never found a host: nothing of it ran, nothing was charged.
    idle = server.new_app(renter, "idle")
    idle_bundle = server.put_blob(renter, b"code that never ran")
    server.new_calls(renter, server.new_function(renter, idle, idle_bundle))
    deployed = _deployed_versions(server, renter)
    for app_id in (t["app"], idle):
        server.ok("POST", f"/v1/apps/{app_id}/stop", token=renter)
    before = _statements(server, t)
    loop = SchedulerLoop(server.state)

    # Past the calls' and logs' windows (30 days), not the metered intervals' (90): their
    # containers and functions are still named by kept rows.
    clock.ms += 60 * DAY_MS
    done = loop.retention(clock.ms)
    assert (done.calls, done.apps, done.functions) == (5, 0, 0)
    assert all(server.state.blobs.exists(b) for b in (t["bundle"], idle_bundle))

    clock.ms += 40 * DAY_MS
    done = loop.retention(clock.ms)
    assert (done.apps, done.functions, done.containers, done.blobs) == (2, 2, 1, 2)
    assert not server.state.blobs.exists(t["bundle"])
    assert not server.state.blobs.exists(idle_bundle)
    for kept in (again_bundle, *deployed):
        assert server.state.blobs.exists(kept)
    # The app that ran keeps its row (its ledger charges name it), without functions; the
    # one that never ran is gone.
    ran = server.ok("GET", f"/v1/apps/{t['app']}", token=renter)
    assert (ran["state"], ran["functions"]) == ("stopped", 0)
    assert server.request("GET", f"/v1/apps/{idle}", token=renter).status_code == 404
    # Statements, the balance and host earnings read the same.
    assert _statements(server, t) == before
    # A rollback can still reach the old version of the deployment.
    info = server.ok("POST", "/v1/deployments/svc/rollback", token=renter, json={"version": 1})
    assert info["version"] == 1
    # A second pass finds nothing more.
    assert loop.retention(clock.ms).total == 0


def test_pruning_goes_in_bounded_batches(make_server: MakeServer) -> None:
    server = make_server()
    clock = FakeClock()
    server.state.clock = clock
    t = _run_calls(server, clock)
    later = clock.ms + 100 * DAY_MS
    with server.state.engine.begin() as conn:
        first = prune_calls(conn, later, 2)
        assert (first.calls, "calls" in first.more) == (2, True)
        second = prune_calls(conn, later, 2)
        assert (second.calls, "calls" in second.more) == (1, False)
        logs = prune_logs(conn, later, 2)
        assert (logs.logs, "logs" in logs.more) == (2, True)
    assert server.ok("GET", f"/v1/calls/{t['queued']}", token=t["renter"])["state"] == "queued"


def test_a_blob_checked_again_is_kept_for_a_new_grace(make_server: MakeServer) -> None:
    server = make_server()
    clock = FakeClock()
    server.state.clock = clock
    renter = server.tenant("renter").token
    sha = _blob(server, renter, b"a blob a client uploaded long ago")
    clock.ms += 2 * DAY_MS
    # The client checks it before using it (as the SDK does): the grace starts again.
    assert server.request("HEAD", f"/v1/blobs/{sha}", token=renter).status_code == 200
    clock.ms += 3_600_000
    loop = SchedulerLoop(server.state)
    assert loop.retention(clock.ms).blobs == 0 and server.state.blobs.exists(sha)
    clock.ms += 2 * DAY_MS
    assert loop.retention(clock.ms).blobs == 1 and not server.state.blobs.exists(sha)
    assert server.request("HEAD", f"/v1/blobs/{sha}", token=renter).status_code == 404
    # Uploading it again brings it back.
    assert _blob(server, renter, b"a blob a client uploaded long ago") == sha
    assert server.request("HEAD", f"/v1/blobs/{sha}", token=renter).status_code == 200


def test_the_logs_of_an_app_older_than_the_log_window_say_lines_are_pruned(
    make_server: MakeServer,
) -> None:
    server = make_server(retention_logs_days=30)
    clock = FakeClock()
    server.state.clock = clock
    t = _run_calls(server, clock)
    page = server.ok("GET", f"/v1/apps/{t['app']}/logs", token=t["renter"])
    assert len(page["lines"]) == 3 and "kept_days" not in page  # the wire older clients read
    clock.ms += 31 * DAY_MS
    SchedulerLoop(server.state).retention(clock.ms)
    page = server.ok("GET", f"/v1/apps/{t['app']}/logs", token=t["renter"])
    assert page["lines"] == [] and page["kept_days"] == 30
