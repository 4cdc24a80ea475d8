"""A call with no live host that could run it says why it waits (its CallInfo, the SDK's
stderr) instead of waiting silently, and runs once a host is back."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import app_basic
from harness import Exchange, wait_for

TESTS = Path(__file__).resolve().parents[1]


def test_a_call_waiting_for_a_lost_host_says_so(exchange: Exchange, builder) -> None:
    with app_basic.app.run(client=builder):
        assert app_basic.square.remote(3) == 9
        exchange.kill_agent("host-a")
        wait_for(lambda: exchange.host("host-a", state="lost"), 30, "the host to be lost")
        call = app_basic.square.spawn(4)
        info = wait_for(
            lambda: i if (i := builder.get_call(call.object_id)).waiting else None,
            30,
            "a waiting reason",
        )
        assert info.state == "queued"
        assert info.waiting.startswith("no live host can run this function"), info.waiting
        assert "crucible hosts" in info.waiting
        exchange.start_agent("host-a")
        assert call.get(timeout=60) == 16
        assert builder.get_call(call.object_id).waiting is None  # finished: nothing to explain


def test_the_sdk_prints_why_a_call_waits(exchange: Exchange) -> None:
    token = exchange.tenant_token("waiter")
    exchange.kill_agent("host-a")
    wait_for(lambda: exchange.host("host-a", state="lost"), 30, "the host to be lost")
    script = textwrap.dedent(
        f"""
        import sys
        import crucible
        import app_basic
        client = crucible.sdk._client.Client({exchange.url!r}, {token!r})
        with app_basic.app.run(client=client):
            call = app_basic.square.spawn(5)
            try:
                call.get(timeout=3)
            except TimeoutError:
                print("still waiting", flush=True)
            import threading, time
            # Waiting with no timeout: it says why within seconds (it said so only after
            # a whole 25 s long poll, so a 13 s wait printed nothing).
            threading.Thread(target=call.get, daemon=True).start()
            mapping = lambda: list(app_basic.square.map(range(3)))
            threading.Thread(target=mapping, daemon=True).start()
            time.sleep(16)  # the map gets no result: after 10 s it says why
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **exchange.process_env(exchange.root / "waiter"),
            "PYTHONPATH": f"{TESTS / 'apps'}:{TESTS}",
        },
        cwd=str(exchange.root),
    )
    assert "still waiting" in out.stdout, out.stdout + out.stderr
    assert "is waiting: no live host can run this function" in out.stderr, out.stderr
    assert out.stderr.count("is waiting:") == 3, out.stderr
    # Once per reason and per waiter, not once per poll: the call's two get()s, the map.
    assert "square.map is waiting: no live host can run this function" in out.stderr
