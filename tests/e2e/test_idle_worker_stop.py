"""An agent told to stop (SIGTERM) stops its idle containers at once: a worker waiting for
work in its exchange's long poll (20 s) leaves it on SIGTERM instead of taking the agent's
whole stop grace and being killed (docs/hosts.md: stopping an agent). The grace here is
short (1.5 s) so that a worker still waiting in its long poll is killed within it."""

from __future__ import annotations

import signal
from pathlib import Path

import app_basic
from harness import Exchange


def test_an_idle_worker_leaves_its_long_poll_when_its_agent_stops(tmp_path: Path) -> None:
    ex = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", CRUCIBLE_STOP_GRACE_S="1.5")
    ex.start_server()
    agent = ex.start_agent("host-a")
    client = ex.client(ex.tenant_token("renter"))
    try:
        with app_basic.app.run(client=client):
            assert app_basic.square.remote(3) == 9  # its container now waits for more work
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=60)
            ex.agents.pop("host-a")
        log = ex.log("agent-host-a")
        assert "ended after SIGTERM" in log, log
        assert "SIGKILL" not in log, log
    finally:
        client.close()
        ex.close()
