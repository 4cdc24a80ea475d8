"""The chaos harness: an exchange of N ``crucible server`` replicas on one PostgreSQL
database and several agents, and a bounded loop that SIGKILLs a server or an agent at
random moments (a seeded RNG; every event is logged) and restarts it.

With N = 1 agents and clients talk to the one server; with N > 1 they talk to haproxy in
front of every member (crucible.testing's start_replica and start_haproxy), so calls are
submitted, claimed and finished on whichever replica the balancer picks. The loop may kill
any member, and with N > 1 it also aims at the elected scheduler leader, read from the
store's ``leadership`` table (with N = 1 the single server is the scheduler). Every member
listens on a port of its own, keeps it across restarts and advertises its URL.
:func:`replicas_supported` says whether this tree elects one scheduler (what makes a second
server on the same database safe).
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from pathlib import Path

from sqlalchemy import MetaData, create_engine, text

from crucible.server.store import tables
from crucible.testing import Replica, free_port, start_haproxy

from harness import Exchange

__all__ = ["ChaosExchange", "ChaosLoop", "replicas_supported"]


def replicas_supported(metadata: MetaData = tables.metadata) -> bool:
    """Whether the store has a table for an elected scheduler leader (the capability that
    makes a second server on the same database safe). The N > 1 chaos case skips without it."""
    return any("leader" in name for name in metadata.tables)


class ChaosExchange(Exchange):
    """An :class:`Exchange` with ``replicas`` servers on one database: member 0 is the
    exchange's own server, the others are :meth:`~crucible.testing.LocalExchange.start_replica`
    replicas, and with more than one, agents and clients reach them all through
    :func:`~crucible.testing.start_haproxy` (the project's one way to run replicas). A killed
    member restarts on its own port, where the balancer expects it."""

    def __init__(self, root: Path, database_url: str, replicas: int = 1, **env: str) -> None:
        super().__init__(root, database_url, **env)
        self.replica_ports = [free_port() for _ in range(replicas - 1)]
        self.members: dict[int, Replica] = {}
        self.balancer: subprocess.Popen[bytes] | None = None

    def process_env(self, home: Path) -> dict[str, str]:
        env = super().process_env(home)
        if home == self.home and self.replicas > 1:  # member 0; start_replica replaces it
            env["CRUCIBLE_ADVERTISE_URL"] = f"http://127.0.0.1:{self.port}"
        return env

    @property
    def replicas(self) -> int:
        return 1 + len(self.replica_ports)

    def start_member(self, index: int) -> None:
        """Start replica ``index`` (0 is the exchange's own server) on its port."""
        if index == 0:
            self.start_server()
            return
        self.members[index] = self.start_replica(index, port=self.replica_ports[index - 1])

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
        self.members.pop(index).kill()

    def start_all(self, agents: list[str]) -> None:
        self.start_server()
        for index in range(1, self.replicas):
            self.start_member(index)
        if self.replicas > 1:
            self.balancer, self.url = start_haproxy(self.root, [self.port, *self.replica_ports])
        for name in agents:
            self.start_agent(name)

    def close(self) -> None:
        super().close()
        for index in list(self.members):
            self.members.pop(index).stop()
        if self.balancer is not None:
            self.balancer.terminate()
            self.balancer.wait(10)
            self.balancer = None


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
