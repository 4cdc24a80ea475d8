"""The sandbox's memory cgroup: memory that address-space limits cannot see (files in the
sandbox's tmpfs) still ends at the sandbox's limit, and only there."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import app_hostile as h
import pytest
from sandbox_testlib import SANDBOX_ENV, bwrap_or_skip

import crucible

from harness import Exchange, wait_for


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    """A bwrap exchange whose tmpfs is larger than a container's memory."""
    bwrap_or_skip()
    from crucible.agent.cgroups import sandbox_cgroup

    probe = sandbox_cgroup(f"probe-{uuid.uuid4().hex[:8]}", 64, 1 << 30)
    if probe is not None:
        probe.remove()
    if probe is None or probe.memory_file is None:
        pytest.skip("the agent cannot create memory cgroups on this machine")
    root = tmp_path_factory.mktemp("roomy")
    env = {**SANDBOX_ENV, "CRUCIBLE_SANDBOX_DISK_MIB": "1024"}
    ex = Exchange(root, f"sqlite:///{root / 'store.db'}", **env)
    ex.start_server()
    try:
        ex.start_agent("host-a")
        yield ex
    finally:
        ex.close()


def test_memory_in_tmpfs_is_bounded_by_the_sandbox_cgroup(roomy: Exchange) -> None:
    attacker: Any = roomy.client(roomy.tenant_token("attacker"))
    neighbour: Any = roomy.client(roomy.tenant_token("neighbour"))
    try:
        with h.app.run(client=attacker), h.neighbours.run(client=neighbour):
            call = h.tmpfs_memory_bomb.spawn()
            assert [h.ping.remote(i) for i in range(3)] == [0, 1, 2]
            with pytest.raises(crucible.ContainerExitedError, match="out of memory"):
                call.get(timeout=60)
            assert h.ping.remote(3) == 3
    finally:
        attacker.close()
        neighbour.close()


def test_cpu_becomes_a_quota_of_the_sandbox_cgroup(roomy: Exchange) -> None:
    roots = [Path("/sys/fs/cgroup/crucible"), Path("/sys/fs/cgroup/cpu/crucible")]

    def quotas() -> set[str]:
        out = set()
        for root in roots:
            for name in ("cpu.max", "cpu.cfs_quota_us"):
                for f in root.glob(f"*/{name}") if root.is_dir() else []:
                    out.add(f.read_text().split()[0])
        return out

    if not any(r.is_dir() for r in roots):
        pytest.skip("the agent cannot create cpu cgroups on this machine")
    client: Any = roomy.client(roomy.tenant_token("quota"))
    try:
        with h.app.run(client=client):
            call = h.hold.spawn(6.0)
            # cpu=1.5: the container's sandbox may use 1.5 cores (150 ms per 100 ms period).
            wait_for(lambda: "150000" in quotas(), 20, "the sandbox's CPU quota")
            assert call.get(timeout=60) == "held"
    finally:
        client.close()
