"""Access to running containers end to end (real server, agent and worker processes on the
``process`` runtime): exec with streams and exit codes, a terminal, port-forward, SSH with
real ``ssh``/``scp``/``rsync`` through ``crucible container proxy``, tenancy, the ends of
sessions. The sandbox's own suite (tests/sandbox/test_access_sandbox.py) runs them in bwrap."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import crucible
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
from crucible.testing import free_port, wait_for

from harness import Exchange


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    root = tmp_path_factory.mktemp("access")
    exchange = Exchange(root, f"sqlite:///{root / 'store.db'}")
    exchange.start_server()
    try:
        exchange.start_agent("host-a")
        yield exchange
    finally:
        exchange.close()


@pytest.fixture(scope="module")
def owner(ex: Exchange) -> Iterator[tuple[str, Any, str, int]]:
    """The host owner's token and client, and a running container serving an echo port
    (and HTTP on the next port)."""
    token = ex.owner_token("owner")
    client = ex.client(token)
    port = free_port()
    try:
        with running_container(client, seconds=600, echo_port=port, http_port=port + 1) as cid:
            yield token, client, cid, port
    finally:
        client.close()


def test_exec_streams_stdout_stderr_and_returns_the_exit_code(ex: Exchange, owner: Any) -> None:
    token, _client, cid, _port = owner
    code, out, err = run_exec(ex, token, cid, ["sh", "-c", "echo out; echo err >&2; pwd; exit 7"])
    assert code == 7
    assert out.splitlines()[0] == b"out" and err == b"err\n"
    assert out.splitlines()[1].endswith(b"/work")  # the container's own work directory


def test_exec_streams_stdin_and_large_output(ex: Exchange, owner: Any) -> None:
    token, _client, cid, _port = owner
    data = bytes(range(256)) * 8192  # 2 MiB, binary
    code, out, _err = run_exec(ex, token, cid, ["cat"], stdin=data)
    assert code == 0 and out == data


def test_exec_never_sees_the_callers_token_or_the_containers(ex: Exchange, owner: Any) -> None:
    token, _client, cid, _port = owner
    code, out, _err = run_exec(ex, token, cid, ["env"])
    assert code == 0
    assert token.encode() not in out
    assert b"CRUCIBLE_CONTAINER_TOKEN" not in out
    assert f"CRUCIBLE_CONTAINER_ID={cid}".encode() in out


def test_a_missing_program_is_a_clear_error(ex: Exchange, owner: Any) -> None:
    token, _client, cid, _port = owner
    with pytest.raises(crucible.InvalidRequestError, match="no program 'bash-nope'"):
        run_exec(ex, token, cid, ["bash-nope"])


def test_a_terminal_has_the_window_size_resizes_and_ctrl_c(ex: Exchange, owner: Any) -> None:
    token, _client, cid, _port = owner
    script = 'trap "echo GOT-INT; exit 3" INT; stty size; echo ready; while :; do sleep 0.05; done'
    session = _tunnels.AccessSession(
        ex.url,
        token,
        cid,
        AccessOpen(kind="exec", argv=["sh", "-c", script], tty=True, rows=33, cols=101),
    )
    seen = b""
    code = None
    try:
        sent_ctrl_c = False
        for event in session.events():
            if isinstance(event, tuple):
                seen += event[1]
                if b"ready" in seen and not sent_ctrl_c:
                    session.send(b"\x03")  # Ctrl-C, as a terminal sends it
                    sent_ctrl_c = True
            elif event.get("type") == "exit":
                code = event["code"]
                break
    finally:
        session.close()
    assert b"33 101" in seen
    assert b"GOT-INT" in seen and code == 3


def test_port_forward_reaches_a_port_inside_the_container(ex: Exchange, owner: Any) -> None:
    token, _client, cid, port = owner
    stop = threading.Event()
    bound: list[int] = []
    ready = threading.Event()

    def listening(p: int) -> None:
        bound.append(p)
        ready.set()

    t = threading.Thread(
        target=_tunnels.port_forward,
        args=(ex.url, token, cid, 0, port),
        kwargs={"on_listening": listening, "stop": stop},
        daemon=True,
    )
    t.start()
    try:
        assert ready.wait(10)
        # 16 MiB both ways at once: more than the socket buffers on the path hold, so a relay
        # whose ends stop reading while they send would deadlock here.
        payload = b"x" * (16 << 20)
        with socket.create_connection(("127.0.0.1", bound[0]), timeout=30) as conn:
            got = b""
            sender = threading.Thread(target=conn.sendall, args=(payload,))
            sender.start()
            while len(got) < len(payload):
                chunk = conn.recv(65536)
                assert chunk, "the tunnel closed early"
                got += chunk
            sender.join()
        assert got == payload
    finally:
        stop.set()
        t.join(5)


def test_a_port_nobody_listens_on_is_a_clear_error(ex: Exchange, owner: Any) -> None:
    token, _client, cid, _port = owner
    with pytest.raises(crucible.InvalidRequestError, match="nothing accepts connections on port"):
        _tunnels.AccessSession(ex.url, token, cid, AccessOpen(kind="tcp", port=free_port()))


def test_another_tenant_gets_the_same_404_as_an_unknown_container(ex: Exchange, owner: Any) -> None:
    _token, _client, cid, _port = owner
    stranger = ex.new_account("stranger")
    with pytest.raises(crucible.NotFoundError) as theirs:
        run_exec(ex, stranger, cid, ["true"])
    unknown = "ct-" + "0" * 22
    with pytest.raises(crucible.NotFoundError) as missing:
        run_exec(ex, stranger, unknown, ["true"])
    assert str(theirs.value).replace(cid, "X") == str(missing.value).replace(unknown, "X")


def test_a_host_token_cannot_open_sessions(ex: Exchange, owner: Any) -> None:
    _token, _client, cid, _port = owner
    with pytest.raises(crucible.PermissionDeniedError, match="user token"):
        run_exec(ex, ex.host_token, cid, ["true"])


def test_ssh_keys_are_validated(ex: Exchange, owner: Any, tmp_path: Path) -> None:
    _token, client, _cid, _port = owner
    for bad, why in [
        ("notakey", "not an OpenSSH public key"),
        ("not a key", "unsupported key type"),
        ("ssh-ed25519 AAAA!!!", "base64"),
        ("ssh-dss AAAAB3NzaC1kc3M=", "unsupported key type"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "PRIVATE"),
        ("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ==", "does not match its type"),
    ]:
        with pytest.raises(crucible.InvalidRequestError, match=why):
            client.transport.post("/v1/ssh-keys", {"public_key": bad})


@pytest.mark.skipif(not ssh_available(), reason=NEEDS_SSH)
def test_ssh_scp_and_rsync_through_the_proxy_with_the_accounts_keys(
    ex: Exchange, owner: Any, tmp_path: Path
) -> None:
    token, client, cid, _port = owner
    good = make_key(tmp_path, "good")
    wrong = make_key(tmp_path, "wrong")
    info = client.transport.post(
        "/v1/ssh-keys", {"public_key": (tmp_path / "good.pub").read_text()}
    )
    assert info["fingerprint"].startswith("SHA256:")
    with pytest.raises(crucible.ConflictError, match="already registered"):
        client.transport.post("/v1/ssh-keys", {"public_key": (tmp_path / "good.pub").read_text()})
    env = ssh_env(ex, token, tmp_path / "home")
    known = tmp_path / "known_hosts"
    try:
        run = subprocess.run(
            ["ssh", *ssh_argv(good, known), f"crucible@{cid}", "echo hello from $(pwd)"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith("hello from ") and run.stdout.strip().endswith("/work")

        src = tmp_path / "payload.bin"
        src.write_bytes(bytes(range(256)) * 4096)
        scp = subprocess.run(
            ["scp", *ssh_argv(good, known), str(src), f"crucible@{cid}:copied.bin"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert scp.returncode == 0, scp.stderr
        back = tmp_path / "back.bin"
        scp = subprocess.run(
            ["scp", *ssh_argv(good, known), f"crucible@{cid}:copied.bin", str(back)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert scp.returncode == 0, scp.stderr
        assert back.read_bytes() == src.read_bytes()

        if shutil.which("rsync"):
            ssh_cmd = (
                " ".join(["ssh", *ssh_argv(good, known)])
                .replace("ProxyCommand=", "'ProxyCommand=")
                .replace(" %h", " %h'")
            )
            rs = subprocess.run(
                ["rsync", "-e", ssh_cmd, str(src), f"crucible@{cid}:rsynced.bin"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert rs.returncode == 0, rs.stderr
            code, out, _ = run_exec(ex, token, cid, ["cmp", "copied.bin", "rsynced.bin"])
            assert code == 0, out

        cli = _cli(
            ex, token, tmp_path, "container", "ssh", cid, "-i", str(good), "--", "echo", "hi"
        )
        assert cli.returncode == 0 and cli.stdout == "hi\n", cli.stderr
        # A container that is not there: one line, before ssh runs (ssh's own errors came
        # around the proxy's).
        cli = _cli(ex, token, tmp_path, "container", "ssh", "ct-nosuchct", "--", "true")
        assert cli.returncode == 1, cli.stderr
        assert "Error:" in cli.stderr and "kex_exchange" not in cli.stderr, cli.stderr

        refused = subprocess.run(
            ["ssh", *ssh_argv(wrong, known), f"crucible@{cid}", "true"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 255
        assert "Permission denied (publickey)" in refused.stderr
    finally:
        for key in client.transport.get("/v1/ssh-keys"):
            client.transport.delete(f"/v1/ssh-keys/{key['id']}")


def test_ssh_without_a_registered_key_says_how_to_add_one(ex: Exchange, owner: Any) -> None:
    token, _client, cid, _port = owner
    with pytest.raises(crucible.InvalidRequestError, match="crucible ssh-key add"):
        _tunnels.AccessSession(ex.url, token, cid, AccessOpen(kind="ssh"))


def test_sessions_end_when_the_container_ends(ex: Exchange) -> None:
    token = ex.owner_token("ender")
    client = ex.client(token)
    outcome: list[BaseException | int] = []

    def long_exec(cid: str) -> None:
        try:
            outcome.append(run_exec(ex, token, cid, ["sleep", "300"])[0])
        except BaseException as exc:
            outcome.append(exc)

    try:
        with running_container(client, seconds=300, other=True) as cid:
            t = threading.Thread(target=long_exec, args=(cid,), daemon=True)
            t.start()
            time.sleep(1.0)  # the session is open (not a timing assertion)
        # Leaving app.run() stops the app's containers: the session ends with its container.
        t.join(60)
        assert not t.is_alive()
        [ended] = outcome
        assert isinstance(ended, crucible.ContainerExitedError), ended
        assert cid in str(ended) and "ended" in str(ended)
        with pytest.raises((crucible.ConflictError, crucible.NotFoundError), match="not running"):
            run_exec(ex, token, cid, ["true"])
    finally:
        client.close()


def test_http_ports_are_published_behind_the_token_or_a_secret_link(
    ex: Exchange, owner: Any
) -> None:
    token, _client, cid, port = owner
    http_port = port + 1
    code, _out, err = run_exec(ex, token, cid, ["sh", "-c", "echo hi from the container > hi.txt"])
    assert code == 0, err
    url = f"{ex.url}/ports/{cid}/{http_port}/hi.txt"
    with httpx.Client(timeout=30) as web:
        # The container's HTTP server starts with it: wait until it listens.
        def served() -> httpx.Response | None:
            r = web.get(url, headers={"authorization": f"Bearer {token}"})
            return None if r.status_code == 400 else r

        r = wait_for(served, timeout_s=60, what="the container's HTTP server")
        assert r.status_code == 200 and r.text == "hi from the container\n"
        r = web.get(url)
        assert r.status_code == 401
        stranger = ex.new_account("web-stranger")
        theirs = web.get(url, headers={"authorization": f"Bearer {stranger}"})
        unknown = web.get(
            f"{ex.url}/ports/ct-{'0' * 22}/{http_port}/hi.txt",
            headers={"authorization": f"Bearer {stranger}"},
        )
        assert theirs.status_code == unknown.status_code == 404
        link = web.get(
            f"{ex.url}/v1/containers/{cid}/ports/{http_port}/link",
            headers={"authorization": f"Bearer {token}"},
        ).json()
        assert link["url"].endswith(f"/ports/{cid}/{http_port}/?crucible_key={link['key']}")
        r = web.get(f"{ex.url}/ports/{cid}/{http_port}/hi.txt?crucible_key={link['key']}")
        assert r.status_code == 200 and r.text.startswith("hi from")
        r = web.get(url)  # the link's cookie now carries the key, for this port only
        assert r.status_code == 200
        web.cookies.clear()
        r = web.get(f"{ex.url}/ports/{cid}/{http_port}/hi.txt?crucible_key={'0' * 32}")
        assert r.status_code == 404
        r = web.get(
            f"{ex.url}/ports/{cid}/{free_port()}/", headers={"authorization": f"Bearer {token}"}
        )
        assert r.status_code == 400 and "nothing accepts connections" in r.text


def _cli(ex: Exchange, token: str, tmp: Path, *args: str, stdin: str = "") -> Any:
    return subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", *args],
        env=ssh_env(ex, token, tmp / "cli-home"),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_execs_and_manages_ssh_keys(ex: Exchange, owner: Any, tmp_path: Path) -> None:
    token, _client, cid, _port = owner
    run = _cli(ex, token, tmp_path, "container", "exec", cid, "--", "sh", "-c", "echo hi; exit 3")
    assert run.returncode == 3 and run.stdout == "hi\n", run.stderr
    run = _cli(ex, token, tmp_path, "container", "exec", "-i", cid, "--", "wc", "-c", stdin="abc")
    assert run.returncode == 0 and run.stdout.strip() == "3", run.stderr
    short = f"ct-{cid[-8:]}"  # the short form tables print
    run = _cli(ex, token, tmp_path, "container", "exec", short, "--", "true")
    assert run.returncode == 0, run.stderr
    run = _cli(ex, token, tmp_path, "container", "exec", cid)
    assert run.returncode == 1 and "give the command after --" in run.stderr
    # -it with stdin a pipe, not a terminal: as ssh, no terminal, and the shell reads the
    # pipe to its end (it waited forever at the end of its input).
    run = _cli(ex, token, tmp_path, "container", "exec", "-it", cid, stdin="echo piped; exit 4\n")
    assert run.returncode == 4 and "piped" in run.stdout, run.stderr
    assert "stdin is not a terminal" in run.stderr
    run = _cli(ex, token, tmp_path, "container", "port-forward", cid, "http")
    assert run.returncode == 1 and "is not a port" in run.stderr

    make_key(tmp_path, "cli")
    run = _cli(ex, token, tmp_path, "ssh-key", "add", str(tmp_path / "cli"))  # the private key
    assert run.returncode == 1 and "PRIVATE key" in run.stderr
    run = _cli(ex, token, tmp_path, "ssh-key", "add", str(tmp_path / "cli.pub"), "--name", "ci")
    assert run.returncode == 0 and "SHA256:" in run.stdout, run.stderr
    run = _cli(ex, token, tmp_path, "ssh-key", "list")
    assert run.returncode == 0 and "ci" in run.stdout
    run = _cli(ex, token, tmp_path, "ssh-key", "rm", "ci")
    assert run.returncode == 0, run.stderr
    run = _cli(ex, token, tmp_path, "ssh-key", "rm", "ci")
    assert run.returncode == 1 and "no SSH key 'ci'" in run.stderr


# A WebSocket server run inside the container (by exec): echoes text and binary, pings the
# client on "ping-me", closes with 4001 on "close-me", answers "path?" with the request path.
_WS_SERVER = """
import asyncio, sys
from websockets.asyncio.server import serve

async def handler(ws):
    async for msg in ws:
        if msg == "path?":
            await ws.send(ws.request.path + " " + str(ws.subprotocol))
        elif msg == "ping-me":
            await (await ws.ping(b"hello"))
            await ws.send("pong-ok")
        elif msg == "close-me":
            await ws.close(4001, "bye")
        elif isinstance(msg, bytes):
            await ws.send(msg[::-1])
        else:
            await ws.send("text:" + msg)

async def main():
    async with serve(handler, "127.0.0.1", int(sys.argv[1]), subprotocols=["chat.v1"],
                     max_size=None):
        await asyncio.sleep(float(sys.argv[2]))

asyncio.run(main())
"""


def test_websockets_are_relayed_through_a_published_port(ex: Exchange, owner: Any) -> None:
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    token, _client, cid, port = owner
    ws_port = free_port()

    def serve() -> None:
        with contextlib.suppress(crucible.Error):  # the container may end first
            run_exec(ex, token, cid, [sys.executable, "-c", _WS_SERVER, str(ws_port), "120"])

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    base = ex.url.replace("http://", "ws://") + f"/ports/{cid}/{ws_port}"
    auth = {"Authorization": f"Bearer {token}"}

    def up() -> bool:
        try:
            with connect(
                f"{base}/", additional_headers=auth, subprotocols=["chat.v1"], open_timeout=10
            ):
                return True
        except InvalidStatus:
            return False

    wait_for(up, timeout_s=60, what="the websocket server in the container")
    with connect(
        f"{base}/chat?room=1", additional_headers=auth, subprotocols=["chat.v1"], max_size=None
    ) as ws:
        assert ws.subprotocol == "chat.v1"
        ws.send("path?")
        assert ws.recv(timeout=30) == "/chat?room=1 chat.v1"
        ws.send("héllo")
        assert ws.recv(timeout=30) == "text:héllo"
        blob = bytes(range(256)) * 4096  # 1 MiB, more than one frame of the tcp session
        ws.send(blob)
        assert ws.recv(timeout=30) == blob[::-1]
        ws.send("ping-me")  # the container's ping is answered through the relay
        assert ws.recv(timeout=30) == "pong-ok"
        ws.ping(b"from-client").wait(timeout=30)
        ws.send("close-me")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "bye")

    with httpx.Client(timeout=30) as web:
        link = web.get(f"{ex.url}/v1/containers/{cid}/ports/{ws_port}/link", headers=auth).json()
    with connect(
        f"{base}/?crucible_key={link['key']}", subprotocols=["chat.v1"], open_timeout=30
    ) as ws:
        ws.send("path?")
        assert ws.recv(timeout=30) == "/ chat.v1"  # the key is not passed on
    stranger = ex.new_account("ws-stranger")
    refusals = {
        "no credentials": ({}, f"{base}/", 401),
        "another tenant": ({"Authorization": f"Bearer {stranger}"}, f"{base}/", 404),
        "a wrong key": ({}, f"{base}/?crucible_key={'0' * 32}", 404),
        "nobody listens": (
            auth,
            ex.url.replace("http", "ws") + f"/ports/{cid}/{free_port()}/",
            400,
        ),
    }
    for what, (headers, url, status) in refusals.items():
        with pytest.raises(InvalidStatus) as refused:
            connect(url, additional_headers=headers, open_timeout=30)
        assert refused.value.response.status_code == status, what
    with pytest.raises(InvalidStatus) as refused:
        connect(base.replace(str(ws_port), str(port + 1)) + "/", additional_headers=auth)
    # An HTTP server that does not upgrade answers with its own status.
    assert refused.value.response.status_code != 101
