"""An agent that stops says so in its last sync (``leaving``): its host is ``offline`` at
once, so nothing is placed or quoted there, instead of until the host timeout (15 s) finds
it silent; a report older than that sync does not bring it back, a new registration does."""

from __future__ import annotations

from sqlalchemy import select

from crucible.protocol.accounts import Scope
from crucible.server.scheduler.loop import SchedulerLoop
from crucible.server.store.tables import hosts

from server_testlib import ServerUnderTest

H100 = [
    {"index": i, "model": "H100", "memory_mib": 81920, "uuid": f"GPU-{i}", "fake": True}
    for i in range(2)
]


def _state(server: ServerUnderTest, host_id: str) -> str:
    with server.state.engine.connect() as conn:
        return str(conn.execute(select(hosts.c.state).where(hosts.c.id == host_id)).scalar_one())


def test_a_leaving_agent_takes_its_host_off_the_market_at_once(server: ServerUnderTest) -> None:
    token = server.tenant("hoster", Scope.HOST).token
    renter = server.tenant("renter").token
    host_id = server.register_host(token, "gpu-1", gpus=H100)
    loop = SchedulerLoop(server.state)
    sync = f"/v1/hosts/{host_id}/sync"
    server.ok("POST", sync, token=token, json={"wait_s": 0, "seq": 1})
    loop.tick()
    quote = {"gpu": "H100"}
    assert server.ok("POST", "/v1/market/quote", token=renter, json=quote)["available"]

    server.ok("POST", sync, token=token, json={"wait_s": 0, "seq": 3, "leaving": True})
    assert _state(server, host_id) == "offline"
    loop.tick()
    refused = server.ok("POST", "/v1/market/quote", token=renter, json=quote)
    assert not refused["available"], refused
    [shown] = server.ok("GET", "/v1/hosts", token=token)
    assert shown["state"] == "offline"

    # A report the agent sent before its last (its exit reporter's, late) changes nothing.
    server.ok("POST", sync, token=token, json={"wait_s": 0, "seq": 2})
    assert _state(server, host_id) == "offline"
    # The next agent registers the host again: it is back.
    assert server.register_host(token, "gpu-1", gpus=H100) == host_id
    server.ok("POST", sync, token=token, json={"wait_s": 0, "seq": 1})
    assert _state(server, host_id) == "ready"
    loop.tick()
    assert server.ok("POST", "/v1/market/quote", token=renter, json=quote)["available"]
