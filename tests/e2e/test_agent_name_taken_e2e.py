"""Two agents started under one host name: only the newest runs the host."""

from __future__ import annotations

import app_basic
from harness import Exchange, wait_for


def test_a_second_agent_under_the_same_name_takes_the_host_and_the_first_stops(
    exchange: Exchange, builder
) -> None:
    first = exchange.agents.pop("host-a")  # the harness keys agents by name
    sessions = exchange.host("host-a")["agent_session"]
    assert sessions >= 1
    try:
        with app_basic.app.run(client=builder):
            call = app_basic.nap.spawn(2)
            wait_for(lambda: builder.get_call(call.object_id).state == "running", 30, "running")
            # (another machine: one agent per state directory, agent/dir_lock.py)
            second = exchange.start_agent("host-a", wait=False, machine="other")
            wait_for(
                lambda: exchange.host("host-a")["agent_session"] == sessions + 1,
                30,
                "the second agent to register",
            )
            # The first agent's next sync is refused: it stops its containers and exits.
            code = wait_for(lambda: first.poll(), 30, "the first agent to exit")
            assert code != 0
            log = exchange.log("agent-host-a")
            assert "another agent registered as host 'host-a'" in log
            assert "Give each agent its own --name" in log
            # The host stays one host, run by the second agent, and the call still ends.
            assert [h["name"] for h in exchange.hosts()] == ["host-a"]
            assert call.get(timeout=60).startswith("ct-")
            assert second.poll() is None
            assert exchange.host("host-a", state="ready") is not None
    finally:
        if first.poll() is None:
            first.kill()
        first.wait()
