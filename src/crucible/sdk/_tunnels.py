"""The client's end of access sessions (exec, port-forward, SSH) into running containers.

Each session is one WebSocket to ``/v1/containers/{id}/access`` on the control plane, which
relays it to the container's agent (protocol: :mod:`crucible.protocol.access`). The functions
here are what ``crucible container exec|port-forward|proxy|ssh`` call; pods resolve a pod to
its container id and call the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, BinaryIO
from urllib.parse import quote

from websockets.exceptions import ConnectionClosed, InvalidStatus

from crucible.errors import Error, ServerUnavailableError, error_from_wire
from crucible.protocol.access import (
    CHANNEL_ERR,
    CHANNEL_IN,
    CHANNEL_OUT,
    AccessOpen,
    websocket_url,
)
from crucible.protocol.websocket import ThreadedWebSocket

__all__ = [
    "AccessSession",
    "exec_command",
    "exec_interactive",
    "parse_forward",
    "port_forward",
    "proxy",
    "ssh_command",
]

_CHUNK = 1 << 16


class AccessSession:
    """One open session. Iterate :meth:`events` for ``(channel, bytes)`` data and control
    dicts; an ``error`` message is raised as the matching :class:`crucible.Error`."""

    def __init__(self, server_url: str, token: str, container_id: str, request: AccessOpen) -> None:
        url = websocket_url(server_url, f"/v1/containers/{quote(container_id, safe='')}/access")
        try:
            self.ws = ThreadedWebSocket(
                url,
                {"Authorization": f"Bearer {token}"},
                max_size=_CHUNK + 1024,
                open_timeout_s=30,
            )
        except InvalidStatus as exc:
            raise ServerUnavailableError(
                f"{server_url} refused the access WebSocket ({exc.response.status_code}); "
                "is it a Crucible control plane with access sessions?"
            ) from None
        except (OSError, TimeoutError) as exc:
            raise ServerUnavailableError(f"cannot reach {server_url}: {exc}") from None
        self._send_lock = threading.Lock()
        # A refused session (bad token) is answered before the request is read: its error
        # message is then waiting below, after the socket closed.
        with contextlib.suppress(ConnectionClosed):
            self.ws.send(request.model_dump_json())
        for event in self.events():  # until "ready" (or an error, raised)
            if isinstance(event, dict) and event.get("type") == "ready":
                return
        raise ServerUnavailableError("the session closed before the container answered")

    def events(self) -> Iterator[tuple[int, bytes] | dict[str, Any]]:
        try:
            for msg in self.ws:
                if isinstance(msg, bytes):
                    if msg:
                        yield msg[0], msg[1:]
                    continue
                try:
                    control = json.loads(msg)
                except ValueError:
                    continue
                if not isinstance(control, dict):
                    continue
                if control.get("type") == "error":
                    raise error_from_wire(str(control.get("code")), str(control.get("message")))
                yield control
        except ConnectionClosed:
            return

    def send(self, data: bytes) -> None:
        with self._send_lock:
            self.ws.send(bytes((CHANNEL_IN,)) + data)

    def control(self, msg: dict[str, Any]) -> None:
        with self._send_lock, contextlib.suppress(ConnectionClosed):
            self.ws.send(json.dumps(msg))

    def eof(self) -> None:
        self.control({"type": "eof"})

    def resize(self, rows: int, cols: int) -> None:
        self.control({"type": "resize", "rows": rows, "cols": cols})

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()

    def pump_from(self, read: Callable[[], bytes], *, eof: bool = True) -> threading.Thread:
        """A thread sending what ``read`` returns until it returns b"" (then eof)."""

        def run() -> None:
            try:
                while True:
                    data = read()
                    if not data:
                        break
                    self.send(data)
                if eof:
                    self.eof()
            except (ConnectionClosed, OSError, ValueError):
                pass

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t


def _exit_status(code: object) -> int:
    if not isinstance(code, int):
        return 1
    return 128 - code if code < 0 else code  # a signal N: 128 + N, as shells report it


def _fd_reader(fd: int) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            return os.read(fd, _CHUNK)
        except OSError:
            return b""

    return read


def exec_command(
    server_url: str,
    token: str,
    container_id: str,
    argv: list[str],
    *,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
) -> int:
    """Run ``argv`` in the container with stdin/stdout/stderr streamed; returns its exit
    status (128+N for a signal N). ``stdin=None`` sends nothing (and end of input at once)."""
    out = stdout or sys.stdout.buffer
    err = stderr or sys.stderr.buffer
    session = AccessSession(server_url, token, container_id, AccessOpen(kind="exec", argv=argv))
    try:
        if stdin is None:
            session.eof()
        else:
            session.pump_from(_fd_reader(stdin.fileno()))
        for event in session.events():
            if isinstance(event, tuple):
                channel, data = event
                target = err if channel == CHANNEL_ERR else out
                target.write(data)
                target.flush()
            elif event.get("type") == "exit":
                return _exit_status(event.get("code"))
        raise ServerUnavailableError("the session ended without the command's exit status")
    finally:
        session.close()


def exec_interactive(server_url: str, token: str, container_id: str, argv: list[str]) -> int:
    """Run ``argv`` on a terminal in the container, this terminal in raw mode: keys (Ctrl-C
    included) go to the remote process, window resizes follow. Returns its exit status."""
    import termios
    import tty

    fd = sys.stdin.fileno()
    rows, cols = _window_size()
    request = AccessOpen(
        kind="exec",
        argv=argv,
        tty=True,
        rows=rows,
        cols=cols,
        term=os.environ.get("TERM", "xterm-256color") or "xterm-256color",
    )
    session = AccessSession(server_url, token, container_id, request)
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None

    def on_winch(signum: int, frame: FrameType | None) -> None:
        session.resize(*_window_size())

    previous = signal.signal(signal.SIGWINCH, on_winch)
    try:
        if saved is not None:
            tty.setraw(fd)
        session.pump_from(_fd_reader(fd), eof=False)
        out = sys.stdout.buffer
        for event in session.events():
            if isinstance(event, tuple):
                out.write(event[1])
                out.flush()
            elif event.get("type") == "exit":
                return _exit_status(event.get("code"))
        return 1
    finally:
        signal.signal(signal.SIGWINCH, previous)
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        session.close()


def _window_size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
        return max(size.lines, 1), max(size.columns, 1)
    except OSError:
        return 24, 80


def proxy(
    server_url: str,
    token: str,
    container_id: str,
    *,
    user: str | None = None,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
) -> int:
    """Bridge stdin/stdout to the container's SSH server (OpenSSH's ``ProxyCommand``). The
    SSH server's own log goes to stderr only when it fails."""
    import getpass

    login = user or _local_user(getpass.getuser)
    session = AccessSession(server_url, token, container_id, AccessOpen(kind="ssh", user=login))
    out = stdout or sys.stdout.buffer
    log = bytearray()
    try:
        session.pump_from(_fd_reader((stdin or sys.stdin.buffer).fileno()))
        for event in session.events():
            if isinstance(event, tuple):
                channel, data = event
                if channel == CHANNEL_OUT:
                    out.write(data)
                    out.flush()
                elif len(log) < 1 << 16:
                    log += data
            elif event.get("type") == "exit":
                code = _exit_status(event.get("code"))
                if code != 0 and log:
                    sys.stderr.write(log.decode("utf-8", "replace"))
                return code
        return 0
    finally:
        session.close()


def _local_user(get: Callable[[], str]) -> str:
    try:
        return get()
    except (KeyError, OSError):
        return "crucible"


def ssh_command(
    container_id: str,
    command: list[str],
    *,
    known_hosts: str,
    identity: str | None = None,
    crucible: list[str] | None = None,
) -> list[str]:
    """The ``ssh`` command line that reaches ``container_id`` through ``crucible container
    proxy`` and runs ``command`` there (none: a login shell). ``crucible`` is how to run
    this CLI (default: this interpreter)."""
    runner = crucible or [sys.executable, "-m", "crucible.cli.main"]
    proxy_command = " ".join(shlex.quote(a) for a in runner) + " container proxy %h"
    argv = [
        "ssh",
        "-o",
        f"ProxyCommand={proxy_command}",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
    ]
    if identity:
        argv += ["-o", "IdentitiesOnly=yes", "-i", identity]
    if not command:
        argv.append("-t")
    return [*argv, f"crucible@{container_id}", *command]


def parse_forward(spec: str) -> tuple[int, int]:
    """``LOCAL[:REMOTE]`` → (local port, remote port); raises ValueError naming the problem."""
    local_s, _, remote_s = spec.partition(":")
    try:
        local = int(local_s)
        remote = int(remote_s) if remote_s else local
    except ValueError:
        raise ValueError(
            f"{spec!r} is not a port: give LOCAL[:REMOTE], e.g. 8888 or 8080:80"
        ) from None
    if not 0 <= local <= 65535:
        raise ValueError(f"local port {local} is out of range (0-65535; 0: any free port)")
    if not 1 <= remote <= 65535:
        raise ValueError(f"port {remote} is out of range (1-65535)")
    return local, remote


def port_forward(
    server_url: str,
    token: str,
    container_id: str,
    local_port: int,
    remote_port: int,
    *,
    bind: str = "127.0.0.1",
    on_listening: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Listen on ``bind:local_port`` (0: any free port, passed to ``on_listening``); each
    connection becomes a session to ``remote_port`` inside the container. Runs until
    ``stop`` is set (or forever)."""
    listener = socket.create_server((bind, local_port))
    listener.settimeout(0.5)
    if on_listening is not None:
        on_listening(listener.getsockname()[1])
    try:
        while stop is None or not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            threading.Thread(
                target=_forward_one,
                args=(server_url, token, container_id, remote_port, conn),
                daemon=True,
            ).start()
    finally:
        listener.close()


def _forward_one(
    server_url: str, token: str, container_id: str, port: int, conn: socket.socket
) -> None:
    try:
        session = AccessSession(server_url, token, container_id, AccessOpen(kind="tcp", port=port))
    except Error as exc:
        sys.stderr.write(f"port-forward: {exc}\n")
        conn.close()
        return
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session.pump_from(lambda: _recv(conn))
        for event in session.events():
            if isinstance(event, tuple):
                conn.sendall(event[1])
            elif event.get("type") == "exit":
                break
    except (Error, OSError) as exc:
        sys.stderr.write(f"port-forward: {exc}\n")
    finally:
        session.close()
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)
        conn.close()


def _recv(conn: socket.socket) -> bytes:
    try:
        return conn.recv(_CHUNK)
    except OSError:
        return b""
