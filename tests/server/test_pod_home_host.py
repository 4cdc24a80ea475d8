"""A stopped pod started again goes back to the host that holds its disk when that host has
the room, CPU pods through the placement index and GPU pods through the market alike: it
went wherever the policy liked best (a tighter host, a cheaper one) and started with an
empty disk, though the docs say a pod moves only when its host is busy or gone."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from crucible.protocol.accounts import Scope
from crucible.server.scheduler.loop import SchedulerLoop
from crucible.server.store.tables import containers, pods

from server_testlib import ServerUnderTest


def _gpus(n: int) -> list[dict[str, Any]]:
    return [
        {"index": i, "model": "H100", "memory_mib": 81920, "uuid": f"GPU-{i}", "fake": True}
        for i in range(n)
    ]


def _live_container(server: ServerUnderTest) -> Any:
    with server.state.engine.connect() as conn:
        return conn.execute(
            select(containers.c.id, containers.c.host_id)
            .join(pods, pods.c.function_id == containers.c.function_id)
            .where(pods.c.name == "box", containers.c.state != "stopped")
        ).one()


def _sync(server: ServerUnderTest, token: str, host_id: str, reports: list[dict[str, Any]]) -> None:
    server.ok(
        "POST", f"/v1/hosts/{host_id}/sync", token=token, json={"containers": reports, "wait_s": 0}
    )


@pytest.mark.parametrize("gpu", [False, True])
def test_a_restarted_pod_goes_back_to_its_disk(server: ServerUnderTest, gpu: bool) -> None:
    alice = server.tenant("alice").token
    host_token = server.tenant("hoster", Scope.HOST).token
    owner = server.tenant("hoster").token
    loop = SchedulerLoop(server.state)
    home = server.register_host(host_token, "big", cpu_cores=8, gpus=_gpus(2) if gpu else [])
    body: dict[str, Any] = {"name": "box", "cpu": 1}
    if gpu:
        body["gpu"] = "H100"
    server.ok("POST", "/v1/pods", token=alice, json=body)
    loop.tick()
    first = _live_container(server)
    assert first.host_id == home
    _sync(server, host_token, home, [{"container_id": first.id, "state": "running"}])
    loop.tick()

    # Another host the policy would rather take: tighter (best-fit) and cheaper.
    other = server.register_host(host_token, "small", cpu_cores=2, gpus=_gpus(1) if gpu else [])
    if gpu:
        for host_id, price in ((home, 3_000_000), (other, 1_000_000)):
            server.ok(
                "PUT",
                f"/v1/hosts/{host_id}/offers",
                token=owner,
                json={
                    "device_type": "H100",
                    "on_demand_micros": price,
                    "interruptible_min_micros": price // 2,
                    "reserved_micros": price,
                },
            )
    _sync(server, host_token, other, [])
    server.ok("POST", "/v1/pods/box/stop", token=alice)
    stopped = {"container_id": first.id, "state": "exited", "exit_code": 0, "reason": "stopped"}
    _sync(server, host_token, home, [stopped])
    loop.tick()
    assert server.ok("GET", "/v1/pods/box", token=alice)["state"] == "stopped"

    server.ok("POST", "/v1/pods/box/start", token=alice)
    loop.tick()
    again = _live_container(server)
    assert again.id != first.id and again.host_id == home  # where its disk is

    # A home without the room: the pod goes elsewhere rather than wait.
    server.ok("POST", "/v1/pods/box/stop", token=alice)
    stopped["container_id"] = again.id
    _sync(server, host_token, home, [stopped])
    loop.tick()
    hog: dict[str, Any] = {"name": "hog", "cpu": 7.5}
    if gpu:
        hog["gpu"] = "H100:2"
    server.ok("POST", "/v1/pods", token=server.tenant("bob").token, json=hog)
    loop.tick()
    server.ok("POST", "/v1/pods/box/start", token=alice)
    loop.tick()
    assert _live_container(server).host_id == other
