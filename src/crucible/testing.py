"""A real exchange on this machine for tests and benchmarks: ``crucible server`` and
``crucible agent`` as subprocesses on a free loopback port, state in a directory of yours.

Nothing is simulated: the processes are the ones operators run. Builders can use it for
their own integration tests::

    from crucible.testing import LocalExchange

    with LocalExchange(tmp_path) as ex:
        client = ex.client(ex.owner_token())
        with app.run(client=client):
            assert square.remote(3) == 9

The agents run the default ``process`` runtime, which does not isolate fully: they run only
their owner's code (the operator account's, whose tokens :meth:`LocalExchange.owner_token`
makes). A fresh tenant from :meth:`LocalExchange.new_account` sees its calls refused there
with a reason that says so; it needs a fully isolated host (docs/sandbox.md).

Settings are passed as environment variables (``env``), e.g. short timeouts for fault tests.

Replicas (on a PostgreSQL ``database_url``): :meth:`LocalExchange.start_replica` starts one
more ``crucible server`` on the same store and home, and :func:`start_haproxy` puts a load
balancer in front of them (docs/operators.md, "Running replicas")::

    with LocalExchange(tmp_path, "postgresql+psycopg://...") as ex:   # replica 0, the leader
        r1 = ex.start_replica(1)
        balancer, ex.url = start_haproxy(tmp_path, [ex.port, r1.port])
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from crucible.protocol.transport import Transport
from crucible.sdk._client import Client

__all__ = ["LocalExchange", "Replica", "free_port", "start_haproxy", "wait_for"]

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], T], timeout_s: float = 30.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; AssertionError on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _stop(proc: subprocess.Popen[bytes], sig: int, timeout_s: float) -> None:
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Replica:
    """One more ``crucible server`` of a :class:`LocalExchange` (see
    :meth:`LocalExchange.start_replica`)."""

    def __init__(self, index: int, proc: subprocess.Popen[bytes], port: int) -> None:
        self.index = index
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def kill(self) -> None:
        """SIGKILL: a crash, nothing handed over."""
        _stop(self.proc, signal.SIGKILL, 10)

    def stop(self) -> None:
        """SIGTERM (it hands its scheduler lease over at once), SIGKILL after 20 s."""
        if self.proc.poll() is None:
            _stop(self.proc, signal.SIGTERM, 20)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    probe = Transport(url, None, retry_for_s=0)

    def healthy() -> bool:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise AssertionError(f"{what} exited: {tail}")
        try:
            return probe.request_raw("GET", "/healthz", retry=False)[0] == 200
        except Exception:
            return False

    try:
        wait_for(healthy, 60, f"{what} to answer /healthz")
    finally:
        probe.close()


HAPROXY_CONFIG = """\
global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    # Long polls hold a request up to a minute; access sessions are WebSocket tunnels.
    timeout client 120s
    timeout server 120s
    timeout tunnel 1h
    retries 3
    option redispatch
frontend api
    bind 127.0.0.1:{port}
    # The client's address and scheme as the balancer saw them, never the client's own
    # headers (docs/operators.md, Running replicas).
    http-request del-header X-Forwarded-For
    http-request del-header X-Forwarded-Proto
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /healthz
{servers}
"""


def start_haproxy(root: Path, ports: list[int]) -> tuple[subprocess.Popen[bytes], str]:
    """haproxy on a free loopback port in front of the replicas listening on ``ports``;
    returns the process and its URL once it answers /healthz (log: ``root/haproxy.log``).
    Raises FileNotFoundError when haproxy is not installed (``apt-get install haproxy``)."""
    import shutil

    exe = shutil.which("haproxy")
    if exe is None:
        raise FileNotFoundError("haproxy is not installed (apt-get install haproxy)")
    port = free_port()
    servers = "\n".join(
        f"    server r{i} 127.0.0.1:{p} check inter 300ms fall 2 rise 1"
        for i, p in enumerate(ports)
    )
    cfg = root / "haproxy.cfg"
    cfg.write_text(HAPROXY_CONFIG.format(port=port, servers=servers))
    log_path = root / "haproxy.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [exe, "-db", "-f", str(cfg)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, "haproxy", log_path)
    except BaseException:
        _stop(proc, signal.SIGTERM, 10)
        raise
    return proc, url


class LocalExchange:
    """A control plane and its agents as subprocesses. Logs go to ``root/<name>.log``.

    ``server_argv`` replaces the server command (a benchmark may wrap it); it must accept
    the same environment as ``python -m crucible.cli.main server``.
    """

    def __init__(
        self,
        root: Path,
        database_url: str | None = None,
        *,
        env: dict[str, str] | None = None,
        server_argv: list[str] | None = None,
    ) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.home = root / "server-home"
        self.database_url = database_url or f"sqlite:///{root / 'store.db'}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # A test exchange is a development one (fake GPUs may register) unless env says.
        self.env = {"CRUCIBLE_DEV_MODE": "1", **(env or {})}
        self.server_argv = server_argv or [sys.executable, "-m", "crucible.cli.main", "server"]
        self.server: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self._admin: Transport | None = None
        self._host_token: str | None = None

    def __enter__(self) -> LocalExchange:
        try:
            self.start_server()
            self.start_agent()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- processes ----------------------------------------------------------------------------
    def process_env(self, home: Path) -> dict[str, str]:
        """The environment of a process of this exchange: the caller's, without its
        CRUCIBLE_ variables, plus ``env`` and its own home."""
        out = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
        out.update(self.env)
        out["CRUCIBLE_HOME"] = str(home)
        return out

    def start_server(self, timeout_s: float = 60) -> float:
        """Start the control plane; returns the seconds until /healthz answered."""
        env = self.process_env(self.home)
        env["CRUCIBLE_DATABASE_URL"] = self.database_url
        env["CRUCIBLE_PORT"] = str(self.port)
        started = time.perf_counter()
        with open(self.root / "server.log", "ab") as log:  # the child keeps its own copy
            self.server = subprocess.Popen(
                self.server_argv, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        # Its own port, not self.url: that may be a balancer other replicas answer behind.
        probe = Transport(f"http://127.0.0.1:{self.port}", None, retry_for_s=0)

        def healthy() -> bool:
            assert self.server is not None
            if self.server.poll() is not None:
                raise AssertionError(f"server exited: {self.log('server')}")
            try:
                return probe.request_raw("GET", "/healthz", retry=False)[0] == 200
            except Exception:
                return False

        try:
            wait_for(healthy, timeout_s, "the server to answer /healthz")
        finally:
            probe.close()
        return time.perf_counter() - started

    def start_replica(self, index: int, port: int | None = None) -> Replica:
        """One more ``crucible server`` on this exchange's store (PostgreSQL) and home, on
        ``port`` (a free one when None; pass a dead replica's port to restart it where a
        balancer expects it); returns once it answers. Each replica advertises its own URL
        (CRUCIBLE_ADVERTISE_URL) for access sessions and reservations. Log:
        ``root/replica-<index>.log``. Start the exchange's own server first: it creates the
        home's secret, keys and admin token, and leads."""
        port = port or free_port()
        env = self.process_env(self.home)
        env["CRUCIBLE_DATABASE_URL"] = self.database_url
        env["CRUCIBLE_PORT"] = str(port)
        env["CRUCIBLE_ADVERTISE_URL"] = f"http://127.0.0.1:{port}"
        log_path = self.root / f"replica-{index}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                self.server_argv, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        replica = Replica(index, proc, port)
        try:
            _wait_healthy(replica.url, proc, f"replica {index}", log_path)
        except BaseException:
            replica.stop()
            raise
        return replica

    def stop_server(self, *, kill: bool = False) -> None:
        """Stop the control plane: gracefully, or with SIGKILL (a crash)."""
        if self.server is not None:
            _stop(self.server, signal.SIGKILL if kill else signal.SIGTERM, 30)
            self.server = None

    def start_agent(
        self,
        name: str = "host-a",
        *,
        fake_gpus: str | None = None,
        wait: bool = True,
        machine: str = "",
    ) -> subprocess.Popen[bytes]:
        """Start an agent for host ``name`` (``fake_gpus`` like ``"4xH100"``). Its state
        directory is the host's own; ``machine`` names another one, as another machine's
        agent under the same host name has (one agent per state directory)."""
        home = self.root / f"agent-{name}{'-' + machine if machine else ''}"
        home.mkdir(parents=True, exist_ok=True)
        token_file = home / "token"
        token_file.write_text(self.host_token)
        cmd = [sys.executable, "-m", "crucible.cli.main", "agent", "--server", self.url]
        cmd += ["--token-file", str(token_file), "--name", name]
        if fake_gpus:
            cmd += ["--fake-gpus", fake_gpus, "--allow-fake-gpus"]
        with open(self.root / f"agent-{name}.log", "ab") as log:
            proc = subprocess.Popen(
                cmd, env=self.process_env(home), stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        self.agents[name] = proc
        if wait:

            def registered() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"agent {name} exited: {self.log(f'agent-{name}')}")
                return self.host(name, state="ready") is not None

            wait_for(registered, 60, f"agent {name} to register")
        return proc

    def kill_agent(self, name: str) -> None:
        """SIGKILL an agent (its containers die with it)."""
        _stop(self.agents.pop(name), signal.SIGKILL, 10)

    def close(self) -> None:
        for proc in self.agents.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.agents.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.agents.clear()
        self.stop_server()
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    def log(self, which: str) -> str:
        """The last 5,000 characters of ``server`` or ``agent-<name>``'s log."""
        path = self.root / f"{which}.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""

    # -- API ----------------------------------------------------------------------------------
    @property
    def admin(self) -> Transport:
        """A client with the operator's admin token (made at the server's first start)."""
        if self._admin is None:
            token = (self.home / "admin-token").read_text().strip()
            self._admin = Transport(self.url, token)
        return self._admin

    @property
    def host_token(self) -> str:
        if self._host_token is None:
            made = self.admin.post("/v1/tokens", {"scope": "host", "name": "local-exchange"})
            self._host_token = str(made["token"])
        return self._host_token

    def owner_token(self, name: str = "builder") -> str:
        """A user token of the account that owns this exchange's agents (the operator's):
        its code runs on them whatever their isolation."""
        made = self.admin.post("/v1/tokens", {"scope": "user", "name": name})
        return str(made["token"])

    def new_account(self, name: str) -> str:
        """A fresh tenant; returns a user token for it. Its code runs only on fully isolated
        hosts (not on this exchange's ``process`` agents: use :meth:`owner_token` for that)."""
        account = self.admin.post("/v1/accounts", {"name": name})
        made = self.admin.post("/v1/tokens", {"scope": "user", "account_id": account["id"]})
        return str(made["token"])

    def client(self, token: str) -> Client:
        return Client(self.url, token)

    def hosts(self) -> list[dict[str, Any]]:
        return list(self.admin.get("/v1/hosts"))

    def host(self, name: str, state: str | None = None) -> dict[str, Any] | None:
        for h in self.hosts():
            if h["name"] == name and (state is None or h["state"] == state):
                return dict(h)
        return None
