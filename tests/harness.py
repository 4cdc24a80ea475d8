"""The exchange the tests run against: :class:`crucible.testing.LocalExchange` (the real
``crucible server`` and ``crucible agent`` as subprocesses on loopback) with short timeouts,
so fault tests finish quickly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from crucible.testing import LocalExchange, free_port, wait_for

__all__ = ["FAST", "OPENB_TRACE", "Exchange", "free_port", "server_output", "wait_for"]

# The Alibaba openb trace, for tests and benchmarks: the project keeps a copy in shared/
# beside the checkout (the product does not ship it; CRUCIBLE_OPENB_TRACE_DIR names it).
OPENB_TRACE = Path(__file__).resolve().parents[2] / "shared" / "data/traces/alibaba-openb-2023"

FAST = {
    "CRUCIBLE_SCHEDULER_INTERVAL_S": "0.1",
    "CRUCIBLE_HOST_TIMEOUT_S": "3",
    "CRUCIBLE_UNSCHEDULABLE_GRACE_S": "1",
    "CRUCIBLE_HEARTBEAT_INTERVAL_S": "0.5",
    "CRUCIBLE_STOP_GRACE_S": "1",
    "CRUCIBLE_TIMEOUT_GRACE_S": "1",
    "CRUCIBLE_SCALEDOWN_WINDOW_S": "30",
    "CRUCIBLE_METER_INTERVAL_S": "1",
    # Most tests run trusted code and count processes: the process runtime, chosen explicitly
    # (the default, auto, would sandbox). tests/sandbox/ passes bwrap.
    "CRUCIBLE_RUNTIME": "process",
}


class Exchange(LocalExchange):
    def __init__(self, root: Path, database_url: str, **env: str) -> None:
        super().__init__(root, database_url, env={**FAST, **env})

    def tenant_token(self, name: str, host: str = "host-a") -> str:
        """A user token for a tenant called ``name`` whose code runs on ``host``: a fresh
        account when the host isolates fully (strangers' code may run there), else a token
        of the host owner's account (a host that does not isolate fully runs its owner's
        code only; docs/sandbox.md)."""
        info = self.host(host)
        if info is not None and info.get("isolated"):
            return self.new_account(name)
        return self.owner_token(name)

    def cli(self, token: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """``crucible ARGS...`` run as a process against this exchange with ``token``."""
        return subprocess.run(
            [sys.executable, "-m", "crucible.cli.main", *args],
            env={
                **self.process_env(home),
                "CRUCIBLE_SERVER_URL": self.url,
                "CRUCIBLE_TOKEN": token,
            },
            capture_output=True,
            text=True,
            timeout=120,
        )


def server_output(
    home: Path,
    until: str,
    *,
    env: dict[str, str] | None = None,
    then: Callable[[], object] | None = None,
) -> str:
    """Start `crucible server` (no CRUCIBLE_* from this environment but ``env``; home
    ``home``, a free port), read what it prints until a line holding ``until`` (60 s at
    most), call ``then`` while it still runs, and stop it (SIGTERM). Returns all it printed."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "crucible.cli.main", "server", "--port", str(free_port())],
        env={**clean, "CRUCIBLE_HOME": str(home), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if until in line:
                if then is not None:
                    then()
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    return "".join(lines) + rest
