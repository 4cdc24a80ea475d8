"""A function held to a region (GPU or CPU-only) runs only there, not on a draining host; when
the region's hosts are all offline or lost its calls wait for them (they may come back), as
with no live host at all; they fail only once no host of the region was seen for an hour
(the scheduler's window for hosts that may come back)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from crucible.protocol.accounts import Scope
from crucible.server.scheduler.loop import SchedulerLoop
from crucible.server.store.tables import hosts

from server_testlib import FULL_ISOLATION, MakeServer, ServerUnderTest

H100 = [{"index": 0, "model": "H100", "memory_mib": 81920, "uuid": "GPU-0", "fake": True}]


def _host(server: ServerUnderTest, token: str, name: str, region: str) -> str:
    inv: dict[str, Any] = {"cpu_cores": 8, "memory_mib": 16384, "disk_mib": 1 << 20, "gpus": H100}
    body = {
        "name": name,
        "region": region,
        "inventory": inv,
        "isolation": FULL_ISOLATION.model_dump(mode="json"),
    }
    return str(server.ok("POST", "/v1/hosts/register", token=token, json=body)["id"])


def _set_host(server: ServerUnderTest, host_id: str, **values: Any) -> None:
    with server.state.engine.begin() as conn:
        conn.execute(update(hosts).where(hosts.c.id == host_id).values(**values))
    server.state.market.offers_changed()


def test_a_region_whose_only_host_is_lost_waits_for_it(make_server: MakeServer) -> None:
    server = make_server(unschedulable_grace_s=0)
    host_token = server.tenant("hoster", Scope.HOST).token
    eu = _host(server, host_token, "eu-box", "eu")
    _host(server, host_token, "us-box", "us")
    builder = server.tenant("builder").token
    for gpu in ("H100", None):  # a GPU function and a CPU one
        resources = {"gpus": [{"model": gpu, "count": 1}]} if gpu else {}
        fn = server.new_function(
            builder,
            server.new_app(builder),
            server.put_blob(builder),
            resources=resources,
            market={"region": "eu"},
        )
        now = server.state.clock.now_ms()
        _set_host(server, eu, state="lost", last_seen_ms=now)
        [call] = server.new_calls(builder, fn)
        SchedulerLoop(server.state).tick()
        info = server.ok("GET", f"/v1/calls/{call}", token=builder)
        assert info["state"] == "queued", info
        assert "region=eu" in info["waiting"] and "stopped answering" in info["waiting"], info
        # Seen last over an hour ago: gone for good, the calls fail with the market's words.
        _set_host(server, eu, last_seen_ms=now - 2 * 3_600_000)
        SchedulerLoop(server.state).tick()
        info = server.ok("GET", f"/v1/calls/{call}", token=builder)
        assert info["state"] == "failed", info
        assert info["error"]["code"] == "resources_unsatisfiable"
        assert info["error"]["message"].startswith("no host in region=eu can run"), info
        assert "hosts big enough are in us" in info["error"]["message"]
        _set_host(server, eu, state="ready", last_seen_ms=now)
