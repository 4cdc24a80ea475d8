"""The agent's register/sync loop against a small in-process fake control plane."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from crucible.agent.main import Agent
from crucible.errors import AuthError, Error
from crucible.protocol.containers import ContainerAssignment, ContainerReport
from crucible.protocol.hosts import HostInfo, HostRegister, HostSync, HostSyncReply
from crucible.settings import Settings

from agent_testlib import make_assignment, py, wait_for

WORKER = """
import os, sys, time
cid = os.environ["CRUCIBLE_CONTAINER_ID"]
open({runs!r}, "a").write(cid + "\\n")
if cid.startswith("crash"):
    print("boom: the model would not load")
    sys.exit(3)
time.sleep(30)
"""


class FakeControlPlane:
    """Just enough of /v1/hosts for an agent: register, and sync with queued work."""

    def __init__(self, port: int = 0) -> None:
        self.lock = threading.Lock()
        self.hosts_by_name: dict[str, str] = {}
        self.registrations: list[HostRegister] = []
        self.syncs: list[tuple[str, HostSync]] = []
        self.pending_start: list[ContainerAssignment] = []
        self.pending_stop: list[str] = []
        self.refuse_token = False
        plane = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like the real server

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, reply = plane.handle(self.path, body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- behaviour -------------------------------------------------------------------------
    def handle(self, path: str, body: Any) -> tuple[int, Any]:
        if self.refuse_token:
            return 401, {"error": {"code": "unauthorized", "message": "unknown token"}}
        if path == "/v1/hosts/register":
            reg = HostRegister.model_validate(body)
            with self.lock:
                self.registrations.append(reg)
                host_id = self.hosts_by_name.setdefault(reg.name, f"h{len(self.registrations)}")
            info = HostInfo(
                id=host_id,
                name=reg.name,
                region=reg.region,
                state="ready",
                inventory=reg.inventory,
                last_seen_ms=0,
                registered_ms=0,
            )
            return 200, info.model_dump(mode="json")
        host_id = path.split("/")[3]
        sync = HostSync.model_validate(body)
        with self.lock:
            if host_id not in self.hosts_by_name.values():
                return 404, {"error": {"code": "not_found", "message": f"no host {host_id}"}}
            self.syncs.append((host_id, sync))
            reply = HostSyncReply(
                start=self.pending_start, stop=self.pending_stop, heartbeat_interval_s=0.1
            )
            self.pending_start, self.pending_stop = [], []
        if not reply.start and not reply.stop:
            time.sleep(min(sync.wait_s, 0.05))  # a short long-poll
        return 200, reply.model_dump(mode="json")

    def lose_state(self) -> None:
        with self.lock:
            self.hosts_by_name.clear()

    def reports(self, cid: str) -> list[tuple[float, ContainerReport]]:
        """(wait_s of the carrying sync, report) for every report of ``cid`` received."""
        with self.lock:
            return [
                (s.wait_s, r) for _, s in self.syncs for r in s.containers if r.container_id == cid
            ]

    def exited(self, cid: str) -> ContainerReport | None:
        return next((r for _, r in self.reports(cid) if r.state == "exited"), None)

    def sync_count(self) -> int:
        with self.lock:
            return len(self.syncs)


@pytest.fixture
def plane() -> Iterator[FakeControlPlane]:
    p = FakeControlPlane()
    yield p
    p.close()


RunAgent = Callable[..., tuple[Agent, threading.Thread]]


@pytest.fixture
def run_agent(tmp_path: Path) -> Iterator[RunAgent]:
    started: list[tuple[Agent, threading.Thread]] = []

    def start(url: str, **kw: Any) -> tuple[Agent, threading.Thread]:
        settings = Settings(
            agent_dir=str(tmp_path / "agent"),
            heartbeat_interval_s=0.1,
            stop_grace_s=0.5,
            runtime="process",  # worker_argv replaces the worker: the process runtime's
        )
        agent = Agent(
            settings,
            server_url=url,
            token="agent-token",
            name="box1",
            worker_argv=py(WORKER.format(runs=str(tmp_path / "runs"))),
            **kw,
        )
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        started.append((agent, thread))
        return agent, thread

    yield start
    for agent, thread in started:
        agent.shutdown()
        thread.join(timeout=10)
        assert not thread.is_alive()


def test_exit_is_reported_at_once_then_forgotten(
    plane: FakeControlPlane, run_agent: RunAgent, tmp_path: Path
) -> None:
    agent, _ = run_agent(plane.url)
    wait_for(lambda: agent.host_id == "h1", what="registration")
    assert plane.registrations[0].name == "box1"
    assert plane.registrations[0].inventory.cpu_cores > 0
    # The process runtime reports that it isolates nothing: its owner's code only.
    isolation = plane.registrations[0].isolation
    assert isolation is not None and isolation.runtime == "process" and not isolation.full()
    with plane.lock:
        plane.pending_start.append(make_assignment("crash1"))
    report = wait_for(lambda: plane.exited("crash1"), what="the exit report")
    assert (report.exit_code, report.reason) == (3, "exited")
    assert "boom: the model would not load" in (report.message or "")
    # The exit travelled on the supervisor's immediate sync (wait_s=0), not only the heartbeat.
    assert any(w == 0 and r.state == "exited" for w, r in plane.reports("crash1"))
    # Acknowledged with 200: forgotten, directory removed, no longer reported.
    cdir = tmp_path / "agent" / "containers" / "crash1"
    wait_for(lambda: not cdir.exists(), what="the container dir to be removed")
    # A re-sent assignment for a finished container must not run it again.
    with plane.lock:
        plane.pending_start.append(make_assignment("crash1"))
    seen = plane.sync_count()
    wait_for(lambda: plane.sync_count() >= seen + 3, what="more syncs")
    assert (tmp_path / "runs").read_text() == "crash1\n"
    _, last_sync = plane.syncs[-1]
    assert all(r.container_id != "crash1" for r in last_sync.containers)


def test_stop_from_the_server(plane: FakeControlPlane, run_agent: RunAgent, tmp_path: Path) -> None:
    run_agent(plane.url)
    with plane.lock:
        # Sent twice (as a server may re-send until it sees a report): started once.
        plane.pending_start += [make_assignment("s1"), make_assignment("s1")]
    wait_for(lambda: any(r.state == "running" for _, r in plane.reports("s1")), what="running")
    with plane.lock:
        plane.pending_stop.append("s1")
    report = wait_for(lambda: plane.exited("s1"), what="the stop")
    assert report.reason == "stopped"
    assert (tmp_path / "runs").read_text() == "s1\n"


def test_reregisters_when_the_server_lost_its_state(
    plane: FakeControlPlane, run_agent: RunAgent
) -> None:
    agent, _ = run_agent(plane.url)
    with plane.lock:
        plane.pending_start.append(make_assignment("keep1"))
    first = wait_for(
        lambda: next((r for _, r in plane.reports("keep1") if r.state == "running"), None),
        what="running",
    )
    plane.lose_state()
    wait_for(lambda: len(plane.registrations) == 2, what="re-registration")
    wait_for(lambda: agent.host_id == "h2", what="the new host id")
    # The container kept running through it and is reported under the new id.
    wait_for(
        lambda: any(
            h == "h2" and r.container_id == "keep1" for h, s in plane.syncs for r in s.containers
        ),
        what="a report under the new id",
    )
    assert agent.runtime.poll()[0].pid == first.pid
    # Syncs are numbered from 1 again after each registration.
    with plane.lock:
        seqs = {h: [s.seq for hh, s in plane.syncs if hh == h] for h in ("h1", "h2")}
    for numbers in seqs.values():
        assert min(numbers) == 1 and len(set(numbers)) == len(numbers)
    assert agent.runtime.poll()[0].state == "running"


def test_waits_for_an_unreachable_server(run_agent: RunAgent) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent, _ = run_agent(f"http://127.0.0.1:{port}")
    time.sleep(0.4)
    assert agent.host_id is None
    late = FakeControlPlane(port)
    try:
        wait_for(lambda: agent.host_id == "h1", timeout_s=5.0, what="registration")
    finally:
        agent.shutdown()
        late.close()


def test_shutdown_stops_containers_and_reports_them(
    plane: FakeControlPlane, run_agent: RunAgent
) -> None:
    agent, thread = run_agent(plane.url)
    with plane.lock:
        plane.pending_start.append(make_assignment("d1"))
    wait_for(lambda: any(r.state == "running" for _, r in plane.reports("d1")), what="running")
    agent.shutdown()
    thread.join(timeout=5)
    assert not thread.is_alive()
    report = plane.exited("d1")
    assert report is not None and report.reason == "stopped"


def test_refused_token_is_fatal(plane: FakeControlPlane, tmp_path: Path) -> None:
    plane.refuse_token = True
    agent = Agent(Settings(agent_dir=str(tmp_path / "agent")), server_url=plane.url, token="bad")
    with pytest.raises(AuthError):
        agent.run()


def test_fake_gpus_without_permission_fail_before_contacting_anyone(tmp_path: Path) -> None:
    agent = Agent(
        Settings(agent_dir=str(tmp_path / "agent"), allow_fake_gpus=False),
        server_url="http://127.0.0.1:9",
        token="t",
        fake_gpus="4xH100",
    )
    with pytest.raises(Error, match="--allow-fake-gpus"):
        agent.run()


def test_fake_gpus_are_registered_when_allowed(plane: FakeControlPlane, tmp_path: Path) -> None:
    agent = Agent(
        Settings(agent_dir=str(tmp_path / "agent"), allow_fake_gpus=True),
        server_url=plane.url,
        token="t",
        name="gpubox",
        fake_gpus="2xH100-80GB",
    )
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: agent.host_id is not None, what="registration")
    finally:
        agent.shutdown()
        thread.join(timeout=5)
    gpus = plane.registrations[0].inventory.gpus
    # The default runtime: the measured report of a sandbox where bwrap works here.
    isolation = plane.registrations[0].isolation
    assert isolation is not None
    assert isolation.runtime in ("bwrap", "process")
    # Either what is missing is said, or nothing is (full, with filtered egress).
    assert isolation.problems or (isolation.full() and isolation.egress_filter)
    assert [(g.model, g.fake, g.uuid) for g in gpus] == [
        ("H100", True, "GPU-fake-gpubox-0"),
        ("H100", True, "GPU-fake-gpubox-1"),
    ]


def test_a_second_agent_on_one_state_directory_is_refused(tmp_path: Path) -> None:
    """Two agents on one directory (a `crucible agent` beside `crucible up`'s, both on
    $CRUCIBLE_HOME/agent) deleted each other's sandboxes and pod disks as leftovers."""
    settings = Settings(agent_dir=str(tmp_path / "agent"))

    def made(s: Settings) -> Agent:
        return Agent(s, server_url="http://127.0.0.1:9", token="t")

    def done(agent: Agent) -> None:  # what run() does with both when it ends
        agent._dir_lock.close()
        agent._transport.close()

    first = made(settings)
    with pytest.raises(Error, match=r"another agent is running with the state directory"):
        made(settings)
    done(made(Settings(agent_dir=str(tmp_path / "other"))))  # its own directory: fine
    done(first)
    done(made(settings))  # the first one has ended
