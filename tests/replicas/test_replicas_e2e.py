"""Several real `crucible server` processes on one PostgreSQL store, one real agent.

Calls submitted to any replica run wherever the agent's workers are parked (the hand-off
crosses replicas through the store and LISTEN/NOTIFY); the scheduler leader is elected; a
SIGKILLed leader is replaced within a few seconds and queued calls still run, once each."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from replicas_testlib import Replica, call_attempts, leadership, start_replica

from access_testlib import running_container
from crucible.errors import MarketRefusedError
from crucible.protocol.transport import Transport
from crucible.sdk import _tunnels
from crucible.sdk._client import Client

import app_basic
from harness import Exchange, wait_for

pytestmark = pytest.mark.postgres

# Short leases so a takeover fits a test; production defaults are 5 s / 1 s.
LEASE = {"CRUCIBLE_LEADER_LEASE_S": "2", "CRUCIBLE_LEADER_RENEW_S": "0.5"}


@pytest.fixture
def replicated(tmp_path: Path, postgres_url: str) -> Iterator[tuple[Exchange, Replica]]:
    """Replica 0 (the exchange's own server, started first, so the leader) and replica 1,
    which the agent and the admin talk to."""
    url = postgres_url
    ex = Exchange(tmp_path, url, **LEASE)
    ex.env["CRUCIBLE_ADVERTISE_URL"] = f"http://127.0.0.1:{ex.port}"
    extra: Replica | None = None
    try:
        ex.start_server()
        wait_for(lambda: leadership(url) is not None, 30, "a scheduler leader")
        extra = start_replica(ex, 1)
        ex.url = extra.url  # the agent and the admin client use replica 1
        ex.start_agent("host-a")
        yield ex, extra
    finally:
        ex.close()
        if extra is not None:
            extra.stop()


def test_calls_cross_replicas_and_survive_the_leaders_death(
    replicated: tuple[Exchange, Replica],
) -> None:
    ex, _ = replicated
    first = leadership(ex.database_url)
    assert first is not None
    token = ex.owner_token("replicas")
    # A client given both replicas' URLs talks to the first (the leader) until it dies.
    via_leader = Client(f"http://127.0.0.1:{ex.port},{ex.url}", token)
    via_follower = ex.client(token)
    try:
        # The agent syncs with replica 1; a call through either replica runs.
        with app_basic.app.run(client=via_leader):
            assert app_basic.square.remote(8) == 64
            assert list(app_basic.square.map(range(20))) == [x * x for x in range(20)]
            # A generator read through replica 0 while its worker sends through replica 1:
            # the caller's progress reaches the worker's replica (else back-pressure would
            # hold each batch past the window for its full 10 s, beyond the call's timeout).
            assert list(app_basic.count_up.remote_gen(3000)) == list(range(3000))
        with app_basic.app.run(client=via_follower):
            assert app_basic.square.remote(7) == 49
            pending = [app_basic.nap.spawn(0.5) for _ in range(3)]
            ex.stop_server(kill=True)  # SIGKILL the leader (replica 0)
            killed_at = time.monotonic()

            def new_leader() -> bool:
                row = leadership(ex.database_url)
                return row is not None and row["epoch"] > first["epoch"]

            wait_for(new_leader, 20, "another replica to take the scheduler over")
            took_s = time.monotonic() - killed_at
            assert took_s < 15, f"takeover took {took_s:.1f} s"
            assert all(p.get(timeout=60) for p in pending)
            later = [app_basic.square.spawn(x) for x in range(5)]
            assert [p.get(timeout=60) for p in later] == [x * x for x in range(5)]
        # The two-URL client fails over to the surviving replica.
        with app_basic.app.run(client=via_leader):
            assert app_basic.square.remote(9) == 81
        assert via_leader.transport.base_url == ex.url
        attempts = call_attempts(ex.database_url)
        assert attempts and all(n == 1 for n in attempts.values()), attempts
    finally:
        via_leader.close()
        via_follower.close()


def test_an_exec_session_whose_client_and_agent_are_on_different_replicas(
    replicated: tuple[Exchange, Replica],
) -> None:
    """The client's WebSocket lands on replica 0, the agent syncs with replica 1: the
    request reaches the agent through the store, and the agent dials replica 0 back."""
    ex, replica1 = replicated
    token = ex.owner_token("access")
    client = ex.client(token)
    try:
        with running_container(client) as cid:
            for url in (f"http://127.0.0.1:{ex.port}", replica1.url):
                out, err = io.BytesIO(), io.BytesIO()
                code = _tunnels.exec_command(
                    url, token, cid, ["sh", "-c", "echo hi; exit 3"], stdout=out, stderr=err
                )
                assert (code, out.getvalue()) == (3, b"hi\n"), err.getvalue()
    finally:
        client.close()


def test_reservations_through_any_replica_are_decided_by_the_leader(
    replicated: tuple[Exchange, Replica],
) -> None:
    """Two reservations of the same two GPUs for the same hour, one through each replica:
    the follower forwards its one to the leader's market, which refuses the overlap (each
    replica deciding on its own copy of the market granted both)."""
    ex, replica1 = replicated
    ex.start_agent("gpu-a", fake_gpus="2xH100")
    token = ex.owner_token("reserver")
    start = int(time.time() * 1000) + 600_000
    body = {"gpu": "2xH100", "start_ms": start, "hours": 1}
    leader = Transport(f"http://127.0.0.1:{ex.port}", token)
    follower = Transport(replica1.url, token)
    try:
        first = follower.post("/v1/reservations", body)
        assert first["count"] == 2
        with pytest.raises(MarketRefusedError):
            leader.post("/v1/reservations", body)
        with pytest.raises(MarketRefusedError):
            follower.post("/v1/reservations", body)
        assert [r["id"] for r in leader.get("/v1/reservations")] == [first["id"]]
        # The leader dies: a reservation through the follower waits for the leadership to
        # move (here to the follower itself) instead of failing with a 503 at once.
        ex.stop_server(kill=True)
        later = {"gpu": "2xH100", "start_ms": start + 3_600_000, "hours": 2}
        made = follower.post("/v1/reservations", later)
        assert made["count"] == 2 and made["id"] != first["id"]
    finally:
        leader.close()
        follower.close()
