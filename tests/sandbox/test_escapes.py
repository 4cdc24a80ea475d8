"""Escape tests: hostile functions in real bwrap sandboxes, through the real agent and worker.

Every attack must be contained with a clear outcome, and a neighbour (another account on the
same host) must keep getting answers while each attack runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import app_hostile as h
import pytest
from sandbox_testlib import stopped_by_memory

import crucible

from harness import Exchange

BLOCKED = {"ENOENT", "EACCES", "EPERM", "EROFS", "ENOTDIR"}


@pytest.fixture(scope="module")
def apps(tenant: Any, neighbour: Any) -> Iterator[None]:
    with h.app.run(client=tenant), h.neighbours.run(client=neighbour):
        assert h.ping.remote(0) == 0  # the neighbour's container is warm
        yield


@contextmanager
def neighbour_keeps_running() -> Iterator[Callable[[], None]]:
    """Call the neighbour while the attack runs; check() asserts the answers came back."""
    answers: list[int] = []

    def check() -> None:
        for i in range(1, 4):
            answers.append(h.ping.remote(i))

    yield check
    assert answers == [1, 2, 3], "the neighbour's calls must keep succeeding"


def attack(fn: Any, *args: Any) -> Any:
    """Spawn the attack, serve the neighbour meanwhile, then return the attack's result."""
    call = fn.spawn(*args)
    with neighbour_keeps_running() as check:
        check()
    return call.get(timeout=60)


def test_runs_as_unprivileged_user_without_capabilities(apps: None) -> None:
    seen = h.identity.remote()
    assert seen["uid"] == 1000 and seen["gid"] == 1000
    assert all(int(v, 16) == 0 for k, v in seen["caps"].items() if k in ("CapEff", "CapPrm"))
    assert seen["cwd"].startswith("/crucible/work/")
    assert "CRUCIBLE_TOKEN" not in seen["env"]  # the agent's own token never reaches it
    assert seen["cuda"] == ""  # no GPU assigned: CUDA sees none


def test_the_memory_bound_leaves_room_for_threads(apps: None) -> None:
    """memory= bounds address space too: 16 threads (each reserving a stack, and a malloc
    arena before arenas were capped) failed from the 8th at the default 512 MiB. (Before the
    fork bomb below: its processes count against the sandbox's process limit until reaped.)"""
    assert h.start_threads.remote(16) == 16


def test_host_files_agent_token_and_other_tenants_are_invisible(
    apps: None, sandboxed: Exchange, tenant: Any, neighbour: Any
) -> None:
    agent_home = sandboxed.root / "agent-host-a"
    secret = Path.home() / ".crucible-escape-test-secret"
    secret.write_text("host secret")
    try:
        paths = [
            str(agent_home / "token"),  # the agent's host token
            str(agent_home),
            str(agent_home / "agent" / "containers"),  # every tenant's container dirs
            str(agent_home / "agent" / "sandboxes"),
            str(agent_home / "agent" / "code"),  # every tenant's code
            str(sandboxed.root / "store.db"),
            str(sandboxed.home / "admin-token"),
            str(secret),
            "/etc/shadow",
            "/var",
        ]
        seen = attack(h.read_paths, [*paths, str(Path.home())])
    finally:
        secret.unlink()
    for path in paths:
        assert seen[path] in BLOCKED, f"{path} is visible from the sandbox: {seen[path]}"
    # The home directory exists inside only as a skeleton when the interpreter lives under it
    # (pyenv): nothing but the interpreter's own directory is there.
    home = seen[str(Path.home())]
    assert (
        home in BLOCKED
        or home == "listed:" + Path(sys.base_prefix).relative_to(Path.home()).parts[0]
    ), home
    # The neighbour's work dir lives in its own sandbox: not even its name is visible here.
    # (Containers of the attacker's own account and image share one sandbox: it sees those.)
    theirs = h.neighbour_work_dir.remote()
    mine = h.identity.remote()
    assert mine["cwd"].rsplit("/", 1)[1] in mine["work"]
    # Two accounts share this host only when its agent reports full isolation (the server's
    # placement rule); until then the harness's tenants are one account (tenant_token).
    me, other = (c.transport.get("/v1/accounts/me")["id"] for c in (tenant, neighbour))
    if me != other:
        assert theirs not in mine["work"]


def test_only_the_sandbox_processes_are_in_proc(apps: None) -> None:
    seen = attack(h.other_processes)
    agents = [p for p, text in seen.items() if "crucible.cli.main" in text]
    assert agents == [], "the agent or server process is visible"
    assert len(seen) < 10, f"host processes are visible: {seen}"
    for text in seen.values():
        assert "CRUCIBLE_TOKEN=" not in text and "admin" not in text


def test_image_code_and_root_are_read_only(apps: None) -> None:
    seen = attack(h.write_everywhere)
    for path, outcome in seen.items():
        assert outcome in BLOCKED, f"wrote {path}"


def test_no_network_unless_asked(apps: None, sandboxed: Exchange) -> None:
    assert attack(h.connect, "127.0.0.1", sandboxed.port) in {"ECONNREFUSED", "ENETUNREACH"}
    assert h.connect.remote("1.1.1.1", 53) in {"ENETUNREACH", "EHOSTUNREACH"}
    # network=True for another account's code runs only where the agent filters egress (and
    # then never reaches the host's loopback); elsewhere the server says why it waits.
    report = (sandboxed.host("host-a") or {}).get("isolation") or {}
    if report.get("egress_filter"):
        seen = h.connect_with_network.remote("127.0.0.1", sandboxed.port)
        assert seen != "connected"
    else:
        with pytest.raises(crucible.Error, match="filters network egress"):
            h.connect_with_network.remote("127.0.0.1", sandboxed.port)


def test_the_host_owners_own_code_may_have_the_network(sandboxed: Exchange) -> None:
    """The host's owner (the account of its host token) runs its own code there: with
    network=True it gets the host's network, as on a process host."""
    token = sandboxed.admin.post("/v1/tokens", {"scope": "user", "name": "owner"})["token"]
    owner = sandboxed.client(token)
    try:
        with h.owners.run(client=owner):
            port = sandboxed.port
            assert h.owner_connect_with_network.remote("127.0.0.1", port) == "connected"
            assert h.owner_connect.remote("127.0.0.1", port) in {"ECONNREFUSED", "ENETUNREACH"}
    finally:
        owner.close()


def test_fork_bomb_hits_the_process_limit(apps: None) -> None:
    from crucible.agent.cgroups import sandbox_cgroup

    probe = sandbox_cgroup("escape-test-probe", 8, 1 << 30)
    if probe is not None:
        probe.remove()
    if (probe is None or not probe.pids) and os.getuid() == 0:
        pytest.skip("no writable pids cgroup, and RLIMIT_NPROC does not bind root")
    seen = attack(h.fork_bomb)
    assert seen["error"] == "EAGAIN"
    assert 0 < seen["forked"] < 64


def test_memory_bomb_fails_with_memory_error(apps: None) -> None:
    call = h.memory_bomb.spawn()
    with neighbour_keeps_running() as check:
        check()
        stopped_by_memory(call)


def test_filling_the_disk_stops_at_the_sandbox_quota(apps: None) -> None:
    seen = attack(h.fill_disk)
    assert set(seen.values()) <= {"ENOSPC", "EFBIG"}, seen


def test_spinning_forever_times_out(apps: None) -> None:
    call = h.spin_forever.spawn()
    with neighbour_keeps_running() as check:
        check()
        with pytest.raises(crucible.FunctionTimeoutError):
            call.get(timeout=60)


def test_killing_the_parent_ends_only_its_own_sandbox(apps: None, sandboxed: Exchange) -> None:
    call = h.kill_parent.spawn()
    with neighbour_keeps_running() as check:
        check()
        with pytest.raises(crucible.ContainerExitedError, match=r"sandbox ended|killed"):
            call.get(timeout=60)
    assert sandboxed.agents["host-a"].poll() is None, "the agent must survive"
    assert h.identity.remote()["uid"] == 1000  # a fresh sandbox serves the next call


def test_proc_self_fd_leads_nowhere(apps: None, sandboxed: Exchange) -> None:
    agent_home = sandboxed.root / "agent-host-a"
    targets = [str(agent_home / "token"), str(Path.home())]
    seen = attack(h.fd_escape, targets)
    for key, outcome in seen.items():
        if key.startswith("fd") and "/" not in key:
            continue  # a readlink: only a name
        assert "token" not in outcome or outcome in BLOCKED, f"{key}: {outcome}"
        assert not outcome.startswith("read:"), f"{key}: {outcome}"
        if outcome.startswith("listed:"):
            # Listing a directory of its own sandbox is fine; the agent's dir is not.
            assert "agent" not in outcome and "token" not in outcome, f"{key}: {outcome}"


def test_seccomp_blocks_namespace_mount_ptrace_and_keyring(apps: None) -> None:
    seen = attack(h.forbidden_syscalls)
    assert seen == {
        "unshare": "EPERM",
        "mount": "EPERM",
        "ptrace": "EPERM",
        "setns": "EPERM",
        "keyctl": "EPERM",
    }
