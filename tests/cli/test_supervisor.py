"""The embedded exchange's process supervisor, over a real child process: restarted with
backoff when it dies, stopped with nothing left running."""

from __future__ import annotations

import os
import signal
import sys

from crucible.cli._supervisor import ProcessSupervisor, restart_delay_s

from harness import wait_for


def test_restart_delay_backs_off_and_is_capped() -> None:
    assert [restart_delay_s(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    # The control plane's (`crucible up`): back well within the clients' 30 s retry window.
    assert [restart_delay_s(n, cap_s=5.0) for n in range(1, 6)] == [1, 2, 4, 5, 5]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_dead_child_is_restarted_and_stop_leaves_nothing() -> None:
    sup = ProcessSupervisor(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(120)"], stop_grace_s=1
    )
    sup.start()
    try:
        first = wait_for(lambda: sup.pid, 30, "the child")
        os.kill(first, signal.SIGKILL)
        second = wait_for(lambda: sup.pid if sup.pid not in (None, first) else None, 30, "restart")
        assert sup.restarts == 1 and sup.last_exit == -signal.SIGKILL
    finally:
        sup.stop()
    assert sup.pid is None and _gone(second)
