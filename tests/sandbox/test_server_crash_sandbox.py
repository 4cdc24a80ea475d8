"""A control plane killed (SIGKILL) and started again while a sandboxed container runs a call:
the container lives on and the call finishes in its first attempt. The sandbox's worker had
SIGPIPE at its default, so its first write to the dead server's connection killed it: the
call failed (or used up a retry, charged), a starting pod ended failed."""

from __future__ import annotations

import time
from pathlib import Path

from sandbox_testlib import SANDBOX_ENV, bwrap_or_skip

from crucible.testing import wait_for

import app_basic
from harness import Exchange


def test_a_server_crash_leaves_running_sandboxes_alone(tmp_path: Path) -> None:
    bwrap_or_skip()
    ex = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", **SANDBOX_ENV)
    ex.start_server()
    try:
        ex.start_agent("host-a")
        client = ex.client(ex.tenant_token("renter"))
        try:
            with app_basic.app.run(client=client):
                # As any Python process (it was SIG_DFL: the first write to a closed
                # connection killed the container).
                assert app_basic.sigpipe_ignored.remote() is True
                call = app_basic.chatty_slowly.spawn(400, 0.02)  # 8 s of lines
                wait_for(
                    lambda: client.get_call(call.object_id).state == "running",
                    60,
                    "the call to run",
                )
                time.sleep(0.5)  # it prints: its worker ships log lines to the server
                ex.stop_server(kill=True)
                time.sleep(1.5)
                ex.start_server()
                assert call.get(timeout=60) == 400  # it ran to its end
                info = client.get_call(call.object_id)
                assert info.attempts == 1, info
        finally:
            client.close()
    finally:
        ex.close()
