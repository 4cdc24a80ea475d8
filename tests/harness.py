"""A real exchange for tests: the control plane and agents as subprocesses on loopback.

Nothing is mocked: ``crucible server`` and ``crucible agent`` run as they do in production,
with short timeouts so fault tests finish quickly. Tests talk to it with the SDK or raw HTTP.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from crucible.protocol.transport import Transport
from crucible.sdk._client import Client

__all__ = ["Exchange", "free_port", "wait_for"]

FAST = {
    "CRUCIBLE_SCHEDULER_INTERVAL_S": "0.1",
    "CRUCIBLE_HOST_TIMEOUT_S": "3",
    "CRUCIBLE_UNSCHEDULABLE_GRACE_S": "1",
    "CRUCIBLE_HEARTBEAT_INTERVAL_S": "0.5",
    "CRUCIBLE_STOP_GRACE_S": "1",
    "CRUCIBLE_TIMEOUT_GRACE_S": "1",
    "CRUCIBLE_SCALEDOWN_WINDOW_S": "30",
    "CRUCIBLE_METER_INTERVAL_S": "1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout_s: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class Exchange:
    def __init__(self, root: Path, database_url: str, **env: str) -> None:
        self.root = root
        self.home = root / "server-home"
        self.database_url = database_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**FAST, **env}
        self.server: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self._admin: Transport | None = None
        self._host_token: str | None = None

    # -- processes ----------------------------------------------------------------------------
    def _env(self, home: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
        env.update(self.env)
        env["CRUCIBLE_HOME"] = str(home)
        return env

    def start_server(self) -> None:
        env = self._env(self.home)
        env["CRUCIBLE_DATABASE_URL"] = self.database_url
        env["CRUCIBLE_PORT"] = str(self.port)
        with open(self.root / "server.log", "ab") as log:  # the child keeps its own copy
            self.server = subprocess.Popen(
                [sys.executable, "-m", "crucible.cli.main", "server"],
                env=env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        probe = Transport(self.url, None, retry_for_s=0)

        def healthy() -> bool:
            assert self.server is not None
            if self.server.poll() is not None:
                raise AssertionError(f"server exited: {self.log('server')}")
            try:
                return probe.request_raw("GET", "/healthz", retry=False)[0] == 200
            except Exception:
                return False

        wait_for(healthy, 30, "the server to answer /healthz")
        probe.close()

    def stop_server(self, *, kill: bool = False) -> None:
        if self.server is None:
            return
        self.server.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.server.wait(timeout=30)
        self.server = None

    def start_agent(
        self, name: str = "host-a", *, fake_gpus: str | None = None, wait: bool = True
    ) -> subprocess.Popen[bytes]:
        home = self.root / f"agent-{name}"
        home.mkdir(parents=True, exist_ok=True)
        token_file = home / "token"
        token_file.write_text(self.host_token)
        cmd = [
            sys.executable,
            "-m",
            "crucible.cli.main",
            "agent",
            "--server",
            self.url,
            "--token-file",
            str(token_file),
            "--name",
            name,
        ]
        if fake_gpus:
            cmd += ["--fake-gpus", fake_gpus, "--allow-fake-gpus"]
        with open(self.root / f"agent-{name}.log", "ab") as log:
            proc = subprocess.Popen(
                cmd, env=self._env(home), stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        self.agents[name] = proc
        if wait:
            wait_for(lambda: self.host(name, state="ready"), 30, f"agent {name} to register")
        return proc

    def kill_agent(self, name: str) -> None:
        proc = self.agents.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def close(self) -> None:
        for proc in self.agents.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.agents.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.agents.clear()
        self.stop_server()
        if self._admin is not None:
            self._admin.close()

    def log(self, which: str) -> str:
        path = self.root / f"{which}.log"
        return path.read_text()[-5000:] if path.exists() else ""

    # -- API ----------------------------------------------------------------------------------
    @property
    def admin(self) -> Transport:
        if self._admin is None:
            token = (self.home / "admin-token").read_text().strip()
            self._admin = Transport(self.url, token)
        return self._admin

    @property
    def host_token(self) -> str:
        if self._host_token is None:
            self._host_token = self.admin.post("/v1/tokens", {"scope": "host", "name": "test"})[
                "token"
            ]
        return self._host_token

    def new_account(self, name: str) -> str:
        """A fresh tenant; returns a user token for it."""
        account = self.admin.post("/v1/accounts", {"name": name})
        return str(
            self.admin.post("/v1/tokens", {"scope": "user", "account_id": account["id"]})["token"]
        )

    def client(self, token: str) -> Client:
        return Client(self.url, token)

    def hosts(self) -> list[dict[str, Any]]:
        return list(self.admin.get("/v1/hosts"))

    def host(self, name: str, state: str | None = None) -> dict[str, Any] | None:
        for h in self.hosts():
            if h["name"] == name and (state is None or h["state"] == state):
                return h
        return None
