"""An agent stopped with SIGTERM (``crucible agent`` ended by its operator, a host's service
manager) ends its containers, reports them, and takes its host off the exchange in the same
last sync: the host is ``offline`` as soon as the agent has exited, not lost 3 s (here; 15 s
by default) later, and nothing is placed there meanwhile."""

from __future__ import annotations

import signal

from harness import Exchange


def test_a_stopped_agent_s_host_is_offline_when_it_exits(exchange: Exchange) -> None:
    proc = exchange.start_agent("leaver")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    exchange.agents.pop("leaver")
    # At once: the host timeout (3 s in these tests) has not passed.
    assert exchange.host("leaver", state="offline") is not None
    # Started again, it is ready again.
    exchange.start_agent("leaver")
    assert exchange.host("leaver", state="ready") is not None
