"""Three real `crucible server` replicas on one PostgreSQL store behind haproxy; the agent,
its workers and the builder all talk to the balancer's one URL."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from subprocess import Popen

import pytest
from replicas_testlib import Replica, call_attempts, leadership, start_haproxy, start_replica

import app_basic
from harness import Exchange, wait_for

pytestmark = pytest.mark.postgres

LEASE = {"CRUCIBLE_LEADER_LEASE_S": "2", "CRUCIBLE_LEADER_RENEW_S": "0.5"}


@pytest.fixture
def balanced(tmp_path: Path, postgres_url: str) -> Iterator[tuple[Exchange, list[Replica]]]:
    url = postgres_url
    ex = Exchange(tmp_path, url, **LEASE)
    extra: list[Replica] = []
    balancer: Popen[bytes] | None = None
    try:
        ex.start_server()
        wait_for(lambda: leadership(url) is not None, 30, "a scheduler leader")
        extra = [start_replica(ex, 1), start_replica(ex, 2)]
        balancer, ex.url = start_haproxy(tmp_path, [ex.port, *(r.port for r in extra)])
        ex.start_agent("host-a")
        yield ex, extra
    finally:
        ex.close()
        for r in extra:
            r.stop()
        if balancer is not None:
            balancer.send_signal(signal.SIGTERM)
            balancer.wait(10)


def test_calls_through_the_balancer_and_a_leader_killed(
    balanced: tuple[Exchange, list[Replica]],
) -> None:
    ex, _ = balanced
    first = leadership(ex.database_url)
    assert first is not None
    client = ex.client(ex.owner_token("balanced"))
    try:
        with app_basic.app.run(client=client):
            assert app_basic.square.remote(6) == 36
            assert list(app_basic.square.map(range(60))) == [x * x for x in range(60)]
            queued = [app_basic.nap.spawn(0.3) for _ in range(4)]
            ex.stop_server(kill=True)  # SIGKILL replica 0, the leader
            killed_at = time.monotonic()

            def new_leader() -> bool:
                row = leadership(ex.database_url)
                return row is not None and row["epoch"] > first["epoch"]

            wait_for(new_leader, 20, "another replica to take the scheduler over")
            assert time.monotonic() - killed_at < 15
            assert all(p.get(timeout=60) for p in queued)
            assert list(app_basic.square.map(range(30))) == [x * x for x in range(30)]
        attempts = call_attempts(ex.database_url)
        assert len(attempts) >= 95
        assert all(n == 1 for n in attempts.values()), attempts
    finally:
        client.close()
