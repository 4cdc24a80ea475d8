"""Replicas for tests: more `crucible server` processes on an exchange's PostgreSQL store.

Every replica of a test shares the first one's home (its secret, keyring and blob directory):
on one machine that is what CRUCIBLE_SECRET, CRUCIBLE_SECRETS_KEYS and a shared blob store
are in production (docs/operators.md, "Running replicas")."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from crucible.protocol.transport import Transport
from crucible.testing import free_port, wait_for

from harness import Exchange


class Replica:
    def __init__(self, ex: Exchange, index: int, proc: subprocess.Popen[bytes], port: int):
        self.ex = ex
        self.index = index
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def kill(self) -> None:
        """SIGKILL: a crash, nothing handed over."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_replica(ex: Exchange, index: int) -> Replica:
    """Start one more server on ``ex``'s store and home; returns once it answers."""
    port = free_port()
    env = ex.process_env(ex.home)
    env["CRUCIBLE_DATABASE_URL"] = ex.database_url
    env["CRUCIBLE_PORT"] = str(port)
    # Its own URL, which agents dial back for access sessions opened here.
    env["CRUCIBLE_ADVERTISE_URL"] = f"http://127.0.0.1:{port}"
    with open(ex.root / f"replica-{index}.log", "ab") as log:
        proc = subprocess.Popen(
            ex.server_argv, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
    replica = Replica(ex, index, proc, port)
    probe = Transport(replica.url, None, retry_for_s=0)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"replica {index} exited: {ex.log(f'replica-{index}')}")
        try:
            return probe.request_raw("GET", "/healthz", retry=False)[0] == 200
        except Exception:
            return False

    try:
        wait_for(healthy, 60, f"replica {index} to answer /healthz")
    finally:
        probe.close()
    return replica


def leadership(database_url: str) -> dict[str, Any] | None:
    """The scheduler lease row, read straight from the store."""
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT epoch, holder, expires_ms FROM leadership WHERE name = 'scheduler'"
        ).fetchone()
    if row is None:
        return None
    return {"epoch": row[0], "holder": row[1], "expires_ms": row[2]}


def call_attempts(database_url: str) -> dict[str, int]:
    """Attempts per call: a call that ran twice shows 2."""
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        return {r[0]: r[1] for r in conn.execute("SELECT id, attempts FROM calls")}


HAPROXY_CONFIG = """\
global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    # Long polls hold a request up to a minute; access sessions are tunnels.
    timeout client 120s
    timeout server 120s
    timeout tunnel 1h
    retries 3
    option redispatch
frontend api
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /healthz
{servers}
"""


def start_haproxy(root: Path, ports: list[int]) -> tuple[subprocess.Popen[bytes], str]:
    """haproxy on a free loopback port over the replicas at ``ports``; returns it and its
    URL once it answers /healthz."""
    exe = shutil.which("haproxy")
    if exe is None:
        pytest.skip("haproxy is not installed (scripts/setup dev installs it when root)")
    port = free_port()
    servers = "\n".join(
        f"    server r{i} 127.0.0.1:{p} check inter 300ms fall 2 rise 1"
        for i, p in enumerate(ports)
    )
    cfg = root / "haproxy.cfg"
    cfg.write_text(HAPROXY_CONFIG.format(port=port, servers=servers))
    with open(root / "haproxy.log", "ab") as log:
        proc = subprocess.Popen(
            [exe, "-db", "-f", str(cfg)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
    url = f"http://127.0.0.1:{port}"
    probe = Transport(url, None, retry_for_s=0)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"haproxy exited: {(root / 'haproxy.log').read_text()[-2000:]}")
        try:
            return probe.request_raw("GET", "/healthz", retry=False)[0] == 200
        except Exception:
            return False

    try:
        wait_for(healthy, 30, "haproxy to answer /healthz")
    finally:
        probe.close()
    return proc, url
