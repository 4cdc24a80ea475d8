"""The chaos harness: an exchange of N ``crucible server`` replicas on one PostgreSQL
database and several agents, and a bounded loop that SIGKILLs a server or an agent at
random moments (a seeded RNG; every event is logged) and restarts it.

Agents and clients talk to member 0 (the exchange's own server); the loop may kill any
member, and with N > 1 it also aims at the elected scheduler leader, read from the store's
``leadership`` table (with N = 1 the single server is the scheduler). Members other than 0
listen on ports of their own and advertise their URL. A second server on the same database
is safe only once replicas elect one scheduler (issue 15, branch i15-replicas):
:func:`replicas_supported` says whether this tree has that.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from pathlib import Path

from sqlalchemy import MetaData, create_engine, text

from crucible.protocol.transport import Transport
from crucible.server.store import tables
from crucible.testing import free_port, wait_for

from harness import Exchange

__all__ = ["ChaosExchange", "ChaosLoop", "replicas_supported"]


def replicas_supported(metadata: MetaData = tables.metadata) -> bool:
    """Whether the store has a table for an elected scheduler leader (the capability that
    makes a second server on the same database safe). The N > 1 chaos case skips without it."""
    return any("leader" in name for name in metadata.tables)


class ChaosExchange(Exchange):
    """An :class:`Exchange` with ``replicas`` servers on one database."""

    def __init__(self, root: Path, database_url: str, replicas: int = 1, **env: str) -> None:
        super().__init__(root, database_url, **env)
        self.replica_ports = [free_port() for _ in range(replicas - 1)]
        self.replica_procs: dict[int, subprocess.Popen[bytes]] = {}

    def process_env(self, home: Path) -> dict[str, str]:
        env = super().process_env(home)
        if home == self.home and self.replicas > 1:  # member 0; others replace it
            env["CRUCIBLE_ADVERTISE_URL"] = self.url
        return env

    @property
    def replicas(self) -> int:
        return 1 + len(self.replica_ports)

    def start_member(self, index: int) -> None:
        """Start replica ``index`` (0 is the exchange's own server)."""
        if index == 0:
            self.start_server()
            return
        port = self.replica_ports[index - 1]
        env = self.process_env(self.home)  # the same home: the same admin token
        env["CRUCIBLE_DATABASE_URL"] = self.database_url
        env["CRUCIBLE_PORT"] = str(port)
        env["CRUCIBLE_ADVERTISE_URL"] = f"http://127.0.0.1:{port}"
        with open(self.root / f"server-{index}.log", "ab") as log:
            proc = subprocess.Popen(
                self.server_argv, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        self.replica_procs[index] = proc
        probe = Transport(f"http://127.0.0.1:{port}", None, retry_for_s=0)

        def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"replica {index} exited: {self.log(f'server-{index}')}")
            try:
                return probe.request_raw("GET", "/healthz", retry=False)[0] == 200
            except Exception:
                return False

        try:
            wait_for(healthy, 60, f"replica {index} to answer /healthz")
        finally:
            probe.close()

    def leader(self) -> int | None:
        """The member that holds the scheduler's leadership now, by its advertised URL
        (None when no member leads or the store has no leadership table)."""
        if not replicas_supported():
            return None
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                urls = [str(u) for u in conn.execute(text("SELECT url FROM leadership")).scalars()]
        finally:
            engine.dispose()
        ports = [self.port, *self.replica_ports]
        for url in urls:
            for index, port in enumerate(ports):
                if url.rstrip("/").endswith(f":{port}"):
                    return index
        return None

    def kill_member(self, index: int) -> None:
        """SIGKILL replica ``index`` (a crash: no graceful shutdown)."""
        if index == 0:
            self.stop_server(kill=True)
            return
        proc = self.replica_procs.pop(index)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def start_all(self, agents: list[str]) -> None:
        self.start_server()
        for index in range(1, self.replicas):
            self.start_member(index)
        for name in agents:
            self.start_agent(name)

    def close(self) -> None:
        super().close()
        for index in list(self.replica_procs):
            proc = self.replica_procs.pop(index)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class ChaosLoop(threading.Thread):
    """Up to ``events`` kill-and-restart events at random moments, until :meth:`stop`.

    Each event SIGKILLs one target (a server replica or an agent, drawn from ``rng``), waits
    a random pause and restarts it; the event and the seed are appended to ``log_path``."""

    def __init__(
        self,
        exchange: ChaosExchange,
        agents: list[str],
        *,
        seed: int,
        events: int,
        log_path: Path,
        max_pause_s: float = 1.5,
    ) -> None:
        super().__init__(name="chaos-loop", daemon=True)
        self.exchange = exchange
        self.agents = agents
        self.rng = random.Random(seed)
        self.seed = seed
        self.events = events
        self.log_path = log_path
        self.max_pause_s = max_pause_s
        self.done: list[str] = []
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        if self.error is not None:
            raise self.error

    def _log(self, text: str) -> None:
        self.done.append(text)
        with open(self.log_path, "a") as f:
            f.write(f"{time.time():.3f} seed={self.seed} {text}\n")

    def run(self) -> None:
        try:
            for n in range(self.events):
                if self._stop_event.wait(self.rng.uniform(0.2, self.max_pause_s)):
                    return
                targets = [f"server-{i}" for i in range(self.exchange.replicas)] + self.agents
                if self.exchange.replicas > 1:
                    targets.append("leader")
                target = self.rng.choice(targets)
                if target == "leader":
                    leader = self.exchange.leader()
                    target = f"server-{leader if leader is not None else 0}"
                pause_s = self.rng.uniform(0.0, self.max_pause_s)
                self._log(f"event {n}: SIGKILL {target}, restart after {pause_s:.2f} s")
                if target.startswith("server-"):
                    index = int(target.removeprefix("server-"))
                    self.exchange.kill_member(index)
                    time.sleep(pause_s)
                    self.exchange.start_member(index)
                else:
                    self.exchange.kill_agent(target)
                    time.sleep(pause_s)
                    self.exchange.start_agent(target)
                self._log(f"event {n}: {target} back")
        except BaseException as e:  # reported by stop(), in the test's thread
            self.error = e
