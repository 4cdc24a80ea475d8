"""Access inside the bwrap sandbox (real server, agent, zygote and worker): an exec runs in
the container's own namespaces (its PID namespace, uid 1000, the sandbox's mounts), a tunnel
reaches a port of the sandbox's network namespace with the network off, SSH works through
the proxy, and the exec'd process never sees a token."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from access_testlib import (
    NEEDS_SSH,
    make_key,
    run_exec,
    running_container,
    ssh_argv,
    ssh_available,
    ssh_env,
)
from crucible.protocol.access import AccessOpen
from crucible.sdk import _tunnels
from crucible.testing import free_port

from harness import Exchange


@pytest.fixture(scope="module")
def boxed(sandboxed: Exchange) -> Iterator[tuple[str, Any, str, int]]:
    token = sandboxed.tenant_token("access-tenant")
    client = sandboxed.client(token)
    port = free_port()
    try:
        with running_container(client, seconds=600, echo_port=port) as cid:
            yield token, client, cid, port
    finally:
        client.close()


def test_exec_runs_inside_the_containers_sandbox(sandboxed: Exchange, boxed: Any) -> None:
    token, _client, cid, _port = boxed
    code, out, err = run_exec(
        sandboxed,
        token,
        cid,
        ["sh", "-c", "id -u; pwd; ls /crucible; cat /proc/1/comm; env; ls /root 2>&1 || true"],
    )
    assert code == 0, err
    lines = out.decode().splitlines()
    assert lines[0] == "1000"  # the sandbox's uid, not the agent's
    assert lines[1] == f"/crucible/work/{cid}"
    assert "bwrap" in lines  # pid 1 of its PID namespace is the sandbox's init
    assert token not in out.decode() and "CRUCIBLE_CONTAINER_TOKEN" not in out.decode()


def test_port_forward_reaches_the_sandboxs_own_network(sandboxed: Exchange, boxed: Any) -> None:
    token, _client, cid, port = boxed
    stop = threading.Event()
    bound: list[int] = []
    ready = threading.Event()

    def listening(p: int) -> None:
        bound.append(p)
        ready.set()

    t = threading.Thread(
        target=_tunnels.port_forward,
        args=(sandboxed.url, token, cid, 0, port),
        kwargs={"on_listening": listening, "stop": stop},
        daemon=True,
    )
    t.start()
    try:
        assert ready.wait(10)
        # The echo server listens on the sandbox's loopback: unreachable from the host.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        with socket.create_connection(("127.0.0.1", bound[0]), timeout=30) as conn:
            conn.sendall(b"hello sandbox")
            assert conn.recv(100) == b"hello sandbox"
    finally:
        stop.set()
        t.join(5)


@pytest.mark.skipif(not ssh_available(), reason=NEEDS_SSH)
def test_ssh_into_the_sandbox(sandboxed: Exchange, boxed: Any, tmp_path: Path) -> None:
    token, client, cid, _port = boxed
    key = make_key(tmp_path, "box")
    client.transport.post("/v1/ssh-keys", {"public_key": (tmp_path / "box.pub").read_text()})
    env = ssh_env(sandboxed, token, tmp_path / "home")
    run = subprocess.run(
        ["ssh", *ssh_argv(key, tmp_path / "known"), f"crucible@{cid}", "id -u; pwd"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1000", f"/crucible/work/{cid}"]
    # Copies: scp (SFTP, and the legacy protocol with -O) and sftp. The sandbox's uid has no
    # /etc/passwd entry, and sftp-server and scp refused to run without one ("No user found
    # for uid 1000"), though the shell and rsync worked.
    src = tmp_path / "payload.bin"
    src.write_bytes(bytes(range(256)) * 64)
    argv = ssh_argv(key, tmp_path / "known")
    for flags, name in (([], "sftp.bin"), (["-O"], "legacy.bin")):
        scp = subprocess.run(
            ["scp", *flags, *argv, str(src), f"crucible@{cid}:{name}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert scp.returncode == 0, (flags, scp.stderr)
    sftp = subprocess.run(
        ["sftp", *argv, f"crucible@{cid}"],
        input="ls -1\nget sftp.bin fetched.bin\n",
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert sftp.returncode == 0, sftp.stderr
    assert "legacy.bin" in sftp.stdout
    assert (tmp_path / "fetched.bin").read_bytes() == src.read_bytes()


def test_a_terminal_in_the_sandbox_has_a_controlling_tty(sandboxed: Exchange, boxed: Any) -> None:
    token, _client, cid, _port = boxed
    script = (
        'trap "echo GOT-INT; exit 4" INT; stty size; tty; echo ready; while :; do sleep 0.05; done'
    )
    session = _tunnels.AccessSession(
        sandboxed.url,
        token,
        cid,
        AccessOpen(kind="exec", argv=["sh", "-c", script], tty=True, rows=40, cols=120),
    )
    seen, code, sent = b"", None, False
    try:
        for event in session.events():
            if isinstance(event, tuple):
                seen += event[1]
                if b"ready" in seen and not sent:
                    session.send(b"\x03")
                    sent = True
            elif event.get("type") == "exit":
                code = event["code"]
                break
    finally:
        session.close()
    # The terminal is the agent's (the host's devpts): `tty` cannot name it inside the
    # sandbox, but it is the process's controlling terminal, with the window's size.
    assert b"40 120" in seen
    assert b"GOT-INT" in seen and code == 4
