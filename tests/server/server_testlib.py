"""Factories for the server tests: a real app in-process, real stores, no mocks.

``ServerUnderTest`` wraps the ASGI app built by :func:`crucible.server.app.create_app` with a
small synchronous facade over ``httpx.AsyncClient`` + ``httpx.ASGITransport`` (one event loop
per server), so test bodies read as plain requests. ``World`` seeds rows through the services
layer for the store tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from sqlalchemy import Connection, Engine, func, select, update

from crucible.core.market import Offer
from crucible.core.scheduling import StartContainer
from crucible.protocol.accounts import Scope
from crucible.protocol.apps import AppCreate, CodeRef, FunctionCreate
from crucible.protocol.calls import CallsCreate, InputItem
from crucible.protocol.common import Payload, Resources, RetryPolicy
from crucible.protocol.hosts import DeviceInfo, HostRegister, Inventory, IsolationReport
from crucible.server.app import build_state, create_app
from crucible.server.auth import Principal, container_token
from crucible.server.services import apps as apps_svc
from crucible.server.services import calls as calls_svc
from crucible.server.services import hosts as hosts_svc
from crucible.server.services.accounts import ensure_account, issue_token
from crucible.server.services.blobs import grant_blob
from crucible.server.services.containers import create_containers
from crucible.server.state import ServerState
from crucible.server.store.tables import containers, functions, hosts, meter_intervals
from crucible.settings import load_settings

__all__ = [
    "FULL_ISOLATION",
    "PROCESS_ISOLATION",
    "V1_ROUTES",
    "MakeServer",
    "ManualClock",
    "ServerUnderTest",
    "Tenant",
    "World",
    "concrete",
    "error_code",
    "send",
    "sha256",
]

BUNDLE = b"PK\x05\x06" + b"\0" * 18  # an empty zip: the server never opens bundles


class ManualClock:
    """A clock a test moves by hand (``clock.now += ms``): set it as ``state.clock``."""

    def __init__(self, now_ms: int) -> None:
        self.now = now_ms

    def now_ms(self) -> int:
        return self.now


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def error_code(response: httpx.Response) -> str:
    """The stable error code of an error response (asserting the documented body shape)."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"].get("message"), str) and body["error"]["message"], body
    return str(body["error"]["code"])


# What an agent on a host set up for strangers' code reports (IsolationReport.full()).
FULL_ISOLATION = IsolationReport(
    runtime="bwrap",
    namespaces=True,
    seccomp=True,
    per_sandbox_uid=True,
    pids_limit="cgroup",
    memory_limit="cgroup",
    cpu_limit="cgroup",
    disk_limit="tmpfs",
    network_policy=True,
    gpu_isolation=True,
)
PROCESS_ISOLATION = IsolationReport(runtime="process", problems=["runtime process"])


@dataclass(frozen=True)
class Tenant:
    account_id: str
    token: str
    token_id: str
    scope: str


class ServerUnderTest:
    """The control plane's ASGI app in this process, with its scheduler loop off."""

    def __init__(self, home: Path, database_url: str, **overrides: Any) -> None:
        overrides.setdefault("dev_mode", True)  # the tests register fake GPUs
        self.settings = load_settings(
            environ={}, home=str(home), database_url=database_url, **overrides
        )
        self.state: ServerState = build_state(self.settings)
        self.app: FastAPI = create_app(self.state, run_scheduler=False)
        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(
            # Unhandled exceptions must come back as the app's 500 answer, not raise here:
            # several tests assert that no client mistake ever produces one.
            transport=httpx.ASGITransport(app=self.app, raise_app_exceptions=False),
            base_url="http://test",
        )

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()
        self.state.engine.dispose()

    # -- HTTP --------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        sent = dict(headers or {})
        if token is not None:
            sent["authorization"] = f"Bearer {token}"
        return self._loop.run_until_complete(
            self._client.request(method, path, headers=sent, **kwargs)
        )

    def ok(self, method: str, path: str, *, token: str, **kwargs: Any) -> Any:
        """The JSON of a request that must succeed."""
        r = self.request(method, path, token=token, **kwargs)
        assert r.status_code < 300, (method, path, r.status_code, r.text)
        return r.json() if r.content else None

    # -- seeding -----------------------------------------------------------------------------
    def tenant(self, name: str, scope: Scope = Scope.USER) -> Tenant:
        """An account called ``name`` (created if missing) and a fresh token of ``scope``. An
        account made for a host token is an approved provider (its fully isolated hosts run
        other accounts' work), as the operator's own accounts are."""
        with self.state.engine.begin() as conn:
            account_id = ensure_account(conn, name, 0, provider=scope is Scope.HOST)
            made = issue_token(conn, account_id, scope, f"{name}-{scope.value}", 0)
        return Tenant(account_id, made.token, made.id, scope.value)

    def put_blob(self, token: str, data: bytes = BUNDLE) -> str:
        sha = sha256(data)
        self.ok("PUT", f"/v1/blobs/{sha}", token=token, content=data)
        return sha

    def new_app(self, token: str, name: str = "app") -> str:
        return str(self.ok("POST", "/v1/apps", token=token, json={"name": name})["id"])

    def new_function(self, token: str, app_id: str, bundle: str, **spec: Any) -> str:
        body = {"name": "f", "code": {"bundle": bundle, "module": "m", "qualname": "f"}, **spec}
        made = self.ok(
            "POST", f"/v1/apps/{app_id}/functions", token=token, json={"functions": [body]}
        )
        return str(made[0]["id"])

    def new_calls(self, token: str, function_id: str, n: int = 1, **body: Any) -> list[str]:
        inputs = [{"args": {"data": "gAQ="}} for _ in range(n)]
        made = self.ok(
            "POST",
            f"/v1/functions/{function_id}/calls",
            token=token,
            json={"inputs": inputs, **body},
        )
        return [str(c) for c in made["call_ids"]]

    def register_host(
        self,
        host_token: str,
        name: str = "host-a",
        *,
        isolation: IsolationReport | None = FULL_ISOLATION,
        **inventory: Any,
    ) -> str:
        """Register a host; by default a fully isolated one (any account's code may run
        there). ``isolation=None`` is an older agent's registration (runtime process)."""
        inv = {"cpu_cores": 8, "memory_mib": 16384, "disk_mib": 1 << 20, **inventory}
        body: dict[str, Any] = {"name": name, "inventory": inv}
        if isolation is not None:
            body["isolation"] = isolation.model_dump(mode="json")
        made = self.ok("POST", "/v1/hosts/register", token=host_token, json=body)
        return str(made["id"])

    def place_container(self, function_id: str, host_id: str) -> tuple[str, str]:
        """A pending container of the function on the host, as the scheduler would create it;
        returns its id and its signed token."""
        with self.state.engine.begin() as conn:
            account = conn.execute(
                select(functions.c.account_id).where(functions.c.id == function_id)
            ).scalar_one()
            create_containers(
                conn,
                [StartContainer(function_id, host_id, 0.25, 512, None, ())],
                {function_id: account},
                self.state.market.cpu_offer,
                0,
                0,
            )
            cid = (
                conn.execute(
                    select(containers.c.id)
                    .where(containers.c.function_id == function_id)
                    .order_by(containers.c.id.desc())
                )
                .scalars()
                .first()
            )
        assert cid is not None
        return str(cid), container_token(self.state.secret, str(cid))


@dataclass
class Metered:
    """One container of a renter's function running on a host, on a clock the test moves:
    what the billing tests start from (:func:`metered_container`)."""

    server: ServerUnderTest
    clock: ManualClock
    host_id: str
    host_token: str
    renter: str
    app_id: str
    function_id: str
    container_id: str
    loop: Any  # the server's SchedulerLoop, ticked by hand

    def report(self, state: str = "running", **fields: Any) -> Any:
        """One sync of the host reporting the container (``state``, and ``fields``)."""
        body = {"containers": [{"container_id": self.container_id, "state": state, **fields}]}
        return self.server.ok(
            "POST", f"/v1/hosts/{self.host_id}/sync", token=self.host_token, json=body
        )

    def billed_ms(self) -> int:
        """The container's time in metered intervals."""
        with self.server.state.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.sum(meter_intervals.c.end_ms - meter_intervals.c.start_ms)).where(
                        meter_intervals.c.container_id == self.container_id
                    )
                ).scalar()
                or 0
            )


def metered_container(server: ServerUnderTest, at_ms: int) -> Metered:
    """A host, a renter's function with one call, and the container the scheduler places for
    it (not yet reported started), on a :class:`ManualClock` at ``at_ms``."""
    from crucible.server.scheduler.loop import SchedulerLoop

    clock = ManualClock(at_ms)
    server.state.clock = clock
    host_token = server.tenant("hoster", Scope.HOST).token
    renter = server.tenant("renter").token
    host_id = server.register_host(host_token, "box")
    app_id = server.new_app(renter)
    fn = server.new_function(renter, app_id, server.put_blob(renter))
    server.new_calls(renter, fn)
    loop = SchedulerLoop(server.state)
    loop.tick()
    with server.state.engine.connect() as conn:
        cid = conn.execute(select(containers.c.id).where(containers.c.function_id == fn)).scalar()
    assert cid is not None
    return Metered(server, clock, host_id, host_token, renter, app_id, fn, str(cid), loop)


MakeServer = Callable[..., ServerUnderTest]
"""The ``make_server`` fixture: builds a server on the test's store (settings as keywords)."""


# -- store-level world ------------------------------------------------------------------------

# $0.04 per core-hour and $0.005 per GiB-hour (the defaults of the settings table).
CPU_OFFER = Offer(
    on_demand=40_000, interruptible_min=20_000, reserved=32_000, memory_on_demand=5_000
)


@dataclass
class World:
    """One account with an app, a host and functions, seeded through the services."""

    engine: Engine
    now_ms: int = 1_000_000
    account_id: str = ""
    principal: Principal = field(default_factory=lambda: Principal("", "user"))
    app_id: str = ""
    host_id: str = ""
    bundle: str = field(default_factory=lambda: sha256(BUNDLE))

    @classmethod
    def create(cls, engine: Engine, name: str = "acme") -> World:
        w = cls(engine)
        with engine.begin() as conn:
            w.account_id = ensure_account(conn, name, w.now_ms)
            w.principal = Principal(w.account_id, "user")
            grant_blob(conn, w.account_id, w.bundle, len(BUNDLE), w.now_ms)
            w.app_id = apps_svc.create_app(conn, w.principal, AppCreate(name="app"), w.now_ms).id
            host = hosts_svc.register_host(
                conn,
                Principal(w.account_id, "host"),
                HostRegister(
                    name=f"{name}-host",
                    inventory=Inventory(
                        cpu_cores=16,
                        memory_mib=65536,
                        disk_mib=0,
                        gpus=[DeviceInfo(index=0, model="H100", memory_mib=81920, uuid="g0")],
                    ),
                ),
                w.now_ms,
            )
            w.host_id = host.id
        return w

    def function(self, name: str = "f", *, timeout_s: float = 60.0, **retries: Any) -> str:
        spec = FunctionCreate(
            name=name,
            code=CodeRef(bundle=self.bundle, module="m", qualname=name),
            resources=Resources(cpu=1.0, memory_mib=1024),
            timeout_s=timeout_s,
            retries=RetryPolicy(**retries),
        )
        with self.engine.begin() as conn:
            made = apps_svc.create_functions(conn, self.principal, self.app_id, [spec], self.now_ms)
        return made[0].id

    def host_synced(self, at_ms: int) -> None:
        """The host's agent synced at ``at_ms`` (running containers are metered only up to
        their host's last sync)."""
        with self.engine.begin() as conn:
            conn.execute(update(hosts).where(hosts.c.id == self.host_id).values(last_seen_ms=at_ms))

    def container(self, function_id: str, *, cpu: float = 1.0, memory_mib: int = 1024) -> str:
        with self.engine.begin() as conn:
            create_containers(
                conn,
                [StartContainer(function_id, self.host_id, cpu, memory_mib, None, ())],
                {function_id: self.account_id},
                lambda _host: CPU_OFFER,
                0,
                self.now_ms,
            )
            return str(
                conn.execute(
                    select(containers.c.id)
                    .where(containers.c.function_id == function_id)
                    .order_by(containers.c.id.desc())
                )
                .scalars()
                .first()
            )

    def submit(
        self,
        conn: Connection,
        function_id: str,
        n: int = 1,
        *,
        keys: list[str | None] | None = None,
        group_id: str | None = None,
    ) -> list[str]:
        fn = apps_svc.get_function_row(conn, self.principal, function_id)
        keys = keys if keys is not None else [None] * n
        req = CallsCreate(
            inputs=[
                InputItem(args=Payload.inline(bytes([i % 256])), idempotency_key=k)
                for i, k in enumerate(keys)
            ],
            group_id=group_id,
        )
        return calls_svc.create_calls(conn, self.principal, fn, req, self.now_ms, 1 << 20)


# Every /v1 route of the API. test_api_auth's OpenAPI test keeps this list honest:
# a new route fails it until it is added here, which also puts it in the auth and 500 sweeps.
V1_ROUTES = sorted(
    [
        ("POST", "/v1/accounts"),
        ("GET", "/v1/accounts/me"),
        ("PATCH", "/v1/accounts/{account}"),
        ("POST", "/v1/tokens"),
        ("GET", "/v1/tokens"),
        ("DELETE", "/v1/tokens/{token_id}"),
        ("PUT", "/v1/blobs/{sha}"),
        ("GET", "/v1/blobs/{sha}"),
        ("HEAD", "/v1/blobs/{sha}"),
        ("POST", "/v1/apps"),
        ("GET", "/v1/apps"),
        ("GET", "/v1/apps/{app_id}"),
        ("POST", "/v1/apps/{app_id}/stop"),
        ("POST", "/v1/apps/{app_id}/heartbeat"),
        ("POST", "/v1/apps/{app_id}/functions"),
        ("GET", "/v1/apps/{app_id}/functions/{name}"),
        ("POST", "/v1/apps/{app_id}/functions/{name}/pools"),
        ("POST", "/v1/functions/{function_id}/calls"),
        ("GET", "/v1/calls"),
        ("GET", "/v1/calls/{call_id}"),
        ("GET", "/v1/calls/{call_id}/timeline"),
        ("POST", "/v1/calls/{call_id}/cancel"),
        ("POST", "/v1/groups/{group_id}/results"),
        ("POST", "/v1/hosts/register"),
        ("POST", "/v1/hosts/{host_id}/sync"),
        ("POST", "/v1/hosts/{host_id}/pod-disks"),
        ("GET", "/v1/hosts"),
        ("POST", "/v1/containers/{container_id}/exchange"),
        ("GET", "/v1/containers"),
        ("GET", "/v1/bill"),
        ("GET", "/v1/market/hosts"),
        ("PUT", "/v1/hosts/{host_id}/offers"),
        ("PATCH", "/v1/hosts/{host_id}/profile"),
        ("DELETE", "/v1/hosts/{host_id}"),
        ("GET", "/v1/earnings"),
        ("GET", "/v1/market/book"),
        ("POST", "/v1/market/quote"),
        ("POST", "/v1/reservations"),
        ("GET", "/v1/reservations"),
        ("POST", "/v1/credits/grants"),
        ("PUT", "/v1/credits/cap"),
        ("GET", "/v1/credits"),
        ("GET", "/v1/audit"),
        ("GET", "/v1/statement"),
        ("POST", "/v1/deployments"),
        ("GET", "/v1/deployments"),
        ("GET", "/v1/deployments/{name}"),
        ("POST", "/v1/deployments/{name}/activate"),
        ("POST", "/v1/deployments/{name}/stop"),
        ("POST", "/v1/deployments/{name}/rollback"),
        ("GET", "/v1/deployments/{name}/functions/{function}"),
        ("POST", "/v1/deployments/{name}/functions/{function}/pools"),
        ("POST", "/v1/jobs/{deployment}/{function}/run"),
        ("POST", "/v1/jobs/{deployment}/{function}/runsync"),
        ("GET", "/v1/jobs/{job_id}"),
        ("GET", "/v1/jobs/{job_id}/stream"),
        ("POST", "/v1/jobs/{job_id}/cancel"),
        ("POST", "/v1/containers/{container_id}/logs"),
        ("GET", "/v1/apps/{app_id}/logs"),
        ("POST", "/v1/containers/{container_id}/items"),
        ("GET", "/v1/calls/{call_id}/items"),
        ("GET", "/v1/containers/{container_id}/calls/{call_id}/inbox"),
        ("POST", "/v1/secrets"),
        ("POST", "/v1/ssh-keys"),
        ("GET", "/v1/containers/{container_id}/ports/{port}/link"),
        ("GET", "/v1/pods/{pod}/ports/{port}/link"),
        ("GET", "/v1/ssh-keys"),
        ("DELETE", "/v1/ssh-keys/{key}"),
        ("GET", "/v1/secrets"),
        ("GET", "/v1/secrets/{name}"),
        ("DELETE", "/v1/secrets/{name}"),
        ("POST", "/v1/secrets/rotate"),
        ("POST", "/v1/apps/{app_id}/secrets"),
        ("GET", "/v1/containers/{container_id}/secrets"),
        ("GET", "/v1/containers/{container_id}/registry-auth"),
        ("POST", "/v1/dicts"),
        ("GET", "/v1/dicts"),
        ("GET", "/v1/dicts/{name}"),
        ("DELETE", "/v1/dicts/{name}"),
        ("POST", "/v1/dicts/{name}/put"),
        ("POST", "/v1/dicts/{name}/get"),
        ("POST", "/v1/dicts/{name}/pop"),
        ("GET", "/v1/dicts/{name}/items"),
        ("POST", "/v1/dicts/{name}/clear"),
        ("POST", "/v1/queues"),
        ("GET", "/v1/queues"),
        ("GET", "/v1/queues/{name}"),
        ("DELETE", "/v1/queues/{name}"),
        ("POST", "/v1/queues/{name}/put"),
        ("POST", "/v1/queues/{name}/get"),
        ("POST", "/v1/queues/{name}/clear"),
        ("POST", "/v1/volumes"),
        ("GET", "/v1/volumes"),
        ("GET", "/v1/volumes/{name}"),
        ("DELETE", "/v1/volumes/{name}"),
        ("GET", "/v1/volumes/{name}/manifest"),
        ("POST", "/v1/volumes/{name}/commit"),
        ("GET", "/v1/volumes/{name}/history"),
        ("POST", "/v1/models"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/{name}"),
        ("POST", "/v1/models/{name}/stop"),
        ("GET", "/v1/models/{name}/usage"),
        ("POST", "/v1/models/{name}/adapters"),
        ("POST", "/v1/pods"),
        ("GET", "/v1/pods"),
        ("GET", "/v1/pods/{pod}"),
        ("DELETE", "/v1/pods/{pod}"),
        ("POST", "/v1/pods/{pod}/stop"),
        ("POST", "/v1/pods/{pod}/start"),
        ("GET", "/v1/pods/{pod}/logs"),
        ("POST", "/v1/clusters"),
        ("GET", "/v1/clusters"),
        ("GET", "/v1/clusters/{cluster}"),
        ("DELETE", "/v1/clusters/{cluster}"),
        ("POST", "/v1/clusters/{cluster}/stop"),
        ("POST", "/v1/clusters/{cluster}/start"),
        ("POST", "/v1/fine-tunes"),
        ("GET", "/v1/fine-tunes"),
        ("GET", "/v1/fine-tunes/{ft_id}"),
        ("POST", "/v1/fine-tunes/{ft_id}/cancel"),
    ]
)


def concrete(path: str) -> str:
    return (
        path.replace("{sha}", "a" * 64)
        .replace("{token_id}", "tk-1")
        .replace("{app_id}", "ap-1")
        .replace("{function_id}", "fn-1")
        .replace("{call_id}", "ca-1")
        .replace("{group_id}", "g1")
        .replace("{host_id}", "ho-1")
        .replace("{container_id}", "ct-1")
        .replace("{name}", "svc")
        .replace("{function}", "f")
        .replace("{deployment}", "svc")
        .replace("{job_id}", "ca-1")
        .replace("{pod}", "pd-1")
        .replace("{cluster}", "cl-1")
        .replace("{account}", "acme")
    )


def send(server: ServerUnderTest, method: str, path: str, **kw: Any) -> httpx.Response:
    """A request to a route template, with placeholder ids and a minimal body."""
    if method == "PUT":
        kw.setdefault("content", b"x")
    elif method == "POST":
        kw.setdefault("json", {})
    return server.request(method, concrete(path), **kw)


@contextmanager
def serving(server: ServerUnderTest) -> Iterator[int]:
    """The server's app under uvicorn on a free loopback port, in a thread (requests at once
    really run at once, in the app's worker threads); yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    httpd = uvicorn.Server(uvicorn.Config(server.app, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=httpd.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not httpd.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        httpd.should_exit = True
        thread.join(10)
        sock.close()
