"""Clusters end to end: two agents on this machine (one fake H100 each), a cluster of two
members placed as one gang, each member told RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT;
an all-reduce across them gives the right sum (plain sockets always; torch.distributed with
gloo where torch is installed). Preempting one member stops the whole gang."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

import crucible
from crucible.protocol.pods import ClusterInfo
from crucible.server.store.tables import containers, pods
from crucible.testing import Transport

from harness import Exchange, wait_for

SCRIPT = Path(__file__).resolve().parents[1] / "apps" / "cluster_allreduce.py"
OUTSIDER = Path(__file__).resolve().parents[1] / "apps" / "cluster_outsider.py"


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[Exchange]:
    ex = Exchange(
        tmp_path,
        f"sqlite:///{tmp_path / 'store.db'}",
        CRUCIBLE_PREEMPTION_GRACE_S="2",
        CRUCIBLE_DEFAULT_INTERRUPTIBLE_FRACTION="0.2",
    )
    ex.start_server()
    try:
        ex.start_agent("gpu-a", fake_gpus="1xH100")
        ex.start_agent("gpu-b", fake_gpus="1xH100")
        yield ex
    finally:
        ex.close()


def _command(mode: str, stay: bool = False) -> str:
    args = [sys.executable, str(SCRIPT), mode] + (["--stay"] if stay else [])
    return "exec " + " ".join(shlex.quote(a) for a in args)


def _cluster(t: Transport, name: str) -> ClusterInfo:
    return ClusterInfo.model_validate(t.get(f"/v1/clusters/{name}"))


def _wait_running(ex: Exchange, t: Transport, name: str, timeout_s: float, what: str) -> None:
    """Wait for the cluster to run; on a timeout, say what its members wait for and what
    the store holds of their containers (a gang that is not placed leaves no other trace)."""
    try:
        wait_for(lambda: _cluster(t, name).state == "running", timeout_s, what)
    except AssertionError as e:
        info = _cluster(t, name)
        engine = create_engine(ex.database_url)
        try:
            with engine.connect() as conn:
                fns = select(pods.c.function_id).where(pods.c.cluster_id == info.id)
                rows = conn.execute(
                    select(
                        containers.c.id,
                        containers.c.function_id,
                        containers.c.host_id,
                        containers.c.state,
                        containers.c.stopped_ms,
                        containers.c.lease_end_ms,
                    ).where(containers.c.function_id.in_(fns))
                ).all()
        finally:
            engine.dispose()
        raise AssertionError(
            f"{e}; the cluster: {info.model_dump_json()}; its containers: "
            f"{[tuple(r) for r in rows]}; the server's log: {ex.log('server')[-3000:]}"
        ) from None


def _lines(client: crucible.Pod) -> list[str]:
    return [x.line for x in client.logs()]


def _all_reduce(ex: Exchange, mode: str) -> None:
    token = ex.owner_token("team")
    client = ex.client(token)
    t = client.transport
    created = ClusterInfo.model_validate(
        t.post(
            "/v1/clusters",
            {"name": "ring", "nodes": 2, "gpu": "H100", "command": _command(mode, stay=True)},
        )
    )
    assert created.nodes == 2 and [m.name for m in created.members] == ["ring-0", "ring-1"]
    info = wait_for(
        lambda: (c := _cluster(t, "ring")).state == "running" and c, 60, "cluster running"
    )
    # All at once, each on its own host, each told its rank and the master's address.
    assert len({m.host_id for m in info.members}) == 2
    assert [m.rank for m in info.members] == [0, 1]
    assert info.master_addr == "127.0.0.1" and info.members[1].address == "127.0.0.1"
    for rank in (0, 1):
        pod = crucible.Pod.from_name(f"ring-{rank}", client=client)
        wait_for(lambda p=pod: "sum=3" in _lines(p), 90, f"rank {rank}'s sum")
        lines = _lines(pod)
        assert f"rank={rank} world=2 master=127.0.0.1:{info.master_port}" in lines
    # A member is stopped with its cluster, not by itself.
    with pytest.raises(crucible.ConflictError, match="crucible cluster stop"):
        t.post("/v1/pods/ring-0/stop")
    stopped = ClusterInfo.model_validate(t.post("/v1/clusters/ring/stop"))
    assert stopped.state in ("stopping", "stopped")
    wait_for(lambda: _cluster(t, "ring").state == "stopped", 30, "cluster stopped")
    client.close()


def test_cluster_all_reduce_over_plain_sockets(two_hosts: Exchange) -> None:
    _all_reduce(two_hosts, "plain")


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_cluster_all_reduce_with_torch_gloo(two_hosts: Exchange) -> None:
    _all_reduce(two_hosts, "torch")


def test_preempting_one_member_stops_the_gang(two_hosts: Exchange) -> None:
    ex = two_hosts
    low = ex.client(ex.owner_token("bargain"))
    high = ex.client(ex.owner_token("deadline"))
    t = low.transport
    t.post(
        "/v1/clusters",
        {
            "name": "cheap",
            "nodes": 2,
            "gpu": "H100",
            "command": "trap 'echo got SIGTERM; exit 0' TERM; echo up; while :; do sleep 0.1; done",
            "market": {"tier": "interruptible", "bid_micros": 500_000},
        },
    )
    info = wait_for(
        lambda: (c := _cluster(t, "cheap")).state == "running" and c, 60, "cluster running"
    )
    members = {m.name: m.container_id for m in info.members}
    # A third renter's on-demand pod needs one H100: one member is preempted, and the other
    # is stopped with it (the gang ends as one), each after its SIGTERM grace.
    urgent = crucible.Pod.create("urgent", gpu="H100", client=high)
    ended = wait_for(
        # Settled: between the preemption and the scheduler's next tick the gang may show
        # a member preempted while the other still runs.
        lambda: (c := _cluster(t, "cheap")).state in ("stopped", "preempted", "failed") and c,
        90,
        "the gang ended",
    )
    states = sorted(m.state for m in ended.members)
    assert states == ["preempted", "stopped"], ended
    # The preempted member is told how a member starts again: with its cluster.
    preempted = next(m for m in ended.members if m.state == "preempted")
    reason = crucible.Pod.from_name(preempted.name, client=low).info().reason or ""
    assert "crucible cluster start" in reason and "pod start" not in reason, reason
    assert ended.reason and "preempted" in ended.reason and "as a whole" in ended.reason
    assert urgent.wait("running", timeout_s=60).state == "running"
    for name in members:
        pod = crucible.Pod.from_name(name, client=low)
        wait_for(lambda p=pod: "got SIGTERM" in _lines(p), 30, f"{name}'s trap")
    engine = create_engine(ex.database_url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(containers.c.id, containers.c.end_cause, containers.c.lease_end_ms).where(
                containers.c.id.in_(list(members.values()))
            )
        ).all()
        assert sorted(r.end_cause for r in rows) == ["gang", "preempted"]
        assert all(r.lease_end_ms is not None for r in rows)  # metering ended for both
    # Nothing restarts the gang until it is started again.
    assert _cluster(t, "cheap").state in ("stopped", "preempted")
    urgent.stop()
    low.close()
    high.close()


# -- the private network: members in bwrap sandboxes, of an account that does not own the hosts


@pytest.fixture
def two_sandboxed_hosts(tmp_path: Path) -> Iterator[Exchange]:
    if os.geteuid() != 0:
        pytest.skip("cluster networks need root (namespaces, bridges, VXLAN, nftables)")
    missing = [t for t in ("bwrap", "ip", "bridge", "nft", "nsenter") if not shutil.which(t)]
    if missing:
        pytest.skip(f"cluster networks need {', '.join(missing)} (scripts/setup dev)")
    ex = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", CRUCIBLE_RUNTIME="bwrap")
    ex.start_server()
    try:
        for name in ("gpu-a", "gpu-b"):
            ex.start_agent(name, fake_gpus="1xH100")
            info = ex.host(name) or {}
            if not info.get("isolated"):
                pytest.skip(f"this machine's sandbox does not isolate fully: {info}")
            assert (info.get("isolation") or {}).get("cluster_network"), info
        yield ex
    finally:
        ex.close()


def _inline(path: Path, *args: str) -> str:
    """A command running ``path`` (a host file the sandbox cannot see) by its source."""
    argv = [sys.executable, "-c", path.read_text(encoding="utf-8"), *args]
    return "exec " + " ".join(shlex.quote(a) for a in argv)


def _answer(target: str) -> str:
    host, port = target.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2) as conn:
            conn.settimeout(2)
            return conn.recv(64).decode("utf-8", "replace")
    except OSError as exc:
        return type(exc).__name__


def _private_all_reduce(ex: Exchange, mode: str, *, again: bool = False) -> None:
    team = ex.client(ex.new_account("team"))
    outsider = ex.client(ex.new_account("outsider"))
    t = team.transport
    try:
        t.post(
            "/v1/clusters",
            {
                "name": "ring",
                "nodes": 2,
                "gpu": "H100",
                "command": _inline(SCRIPT, mode, "--serve", "--stay"),
            },
        )
        info = wait_for(
            lambda: (c := _cluster(t, "ring")).state == "running" and c, 90, "cluster running"
        )
        assert len({m.host_id for m in info.members}) == 2
        # Members are told their private addresses, not their hosts'.
        addrs = [m.address or "" for m in info.members]
        assert all(a.startswith("10.201.") for a in addrs), addrs
        assert info.master_addr == addrs[0] and addrs[0] != addrs[1]
        serve_port = info.master_port + 1
        for rank in (0, 1):
            pod = crucible.Pod.from_name(f"ring-{rank}", client=team)
            wait_for(lambda p=pod: "sum=3" in _lines(p), 180, f"rank {rank}'s sum")
            assert f"rank={rank} world=2 master={addrs[0]}:{info.master_port}" in _lines(pod)
        ring1 = crucible.Pod.from_name("ring-1", client=team)
        wait_for(lambda: "reached rank 0: member 0" in _lines(ring1), 60, "rank 1 reached rank 0")

        # Another account's sandbox on the same hosts reaches neither member, by its private
        # address or by the host's.
        targets = [f"{a}:{serve_port}" for a in addrs] + [f"127.0.0.1:{serve_port}"]
        probe = crucible.Pod.create(
            "probe", command=_inline(OUTSIDER, *targets) + "; sleep 600", client=outsider
        )
        line = wait_for(
            lambda: next((x for x in _lines(probe) if x.startswith("outsider ")), None),
            90,
            "the outsider's attempts",
        )
        seen = json.loads(line.removeprefix("outsider "))
        assert set(seen) == set(targets), seen
        assert not any(v.startswith("connected") for v in seen.values()), seen
        # Nor does the host itself: the members' ports are on their private network only.
        # (Where the host's default route leads to a proxy that accepts any connection, a
        # connection may open: it must not be answered by a member.)
        for target in targets:
            assert "member" not in _answer(target), target
        probe.stop()
        t.post("/v1/clusters/ring/stop")
        wait_for(lambda: _cluster(t, "ring").state == "stopped", 60, "cluster stopped")
        if again:
            # Started again (its ranks may land on the other hosts): a new run on the network.
            t.post("/v1/clusters/ring/start")
            _wait_running(ex, t, "ring", 90, "cluster running again")
            for rank in (0, 1):
                pod = crucible.Pod.from_name(f"ring-{rank}", client=team)
                wait_for(
                    lambda p=pod: _lines(p).count("sum=3") == 2, 180, f"rank {rank}'s second sum"
                )
            t.post("/v1/clusters/ring/stop")
            wait_for(lambda: _cluster(t, "ring").state == "stopped", 60, "cluster stopped")
    except BaseException:
        for name in ("server", "agent-gpu-a", "agent-gpu-b"):
            print(ex.log(name)[-6000:])
        raise
    finally:
        team.close()
        outsider.close()


def test_private_network_all_reduce_over_plain_sockets(two_sandboxed_hosts: Exchange) -> None:
    _private_all_reduce(two_sandboxed_hosts, "plain", again=True)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_private_network_all_reduce_with_torch_gloo(two_sandboxed_hosts: Exchange) -> None:
    _private_all_reduce(two_sandboxed_hosts, "torch")
