"""The agent's end of access sessions: exec, TCP tunnels and SSH into its containers.

The server asks for a session in a sync reply (:class:`AccessRequest`); the agent dials a
WebSocket back to ``/v1/hosts/{host}/access/{session}`` (hosts only dial out) and bridges it
to what the session reaches, in one thread per session:

- ``exec``: a process the runtime starts in the container (inside its sandbox), on pipes or,
  with ``tty``, on a pseudo-terminal whose size follows the client's window;
- ``tcp``: a connection to a port of the container's own network namespace;
- ``ssh``: an SSH server (dropbear in inetd mode) speaking over the session, accepting the
  account's registered keys: ``python -m crucible.worker.sshd`` in a container of the default
  image, the agent's own bundled server in one from an OCI image
  (:mod:`crucible.agent.ssh_bundle`).

Flow control: each direction moves one message at a time, and a write to the process or the
connection blocks until it takes the data, so a slow side slows the other end down instead
of filling memory. A session ends when either side closes or its container ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import struct
import termios
import threading
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed

from crucible.agent.exec_process import ExecProcess
from crucible.agent.runtimes import Runtime
from crucible.agent.ssh_bundle import SshServer
from crucible.errors import Error, NotFoundError
from crucible.protocol.access import (
    CHANNEL_ERR,
    CHANNEL_IN,
    CHANNEL_OUT,
    AccessRequest,
    websocket_url,
)
from crucible.protocol.websocket import ThreadedWebSocket

__all__ = ["AccessDialer", "set_window_size"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 16
# A read side still open after its process ended (a background child holds the pipe) is
# not waited for longer than this.
_DRAIN_S = 2.0
SSH_MODULE = "crucible.worker.sshd"


def set_window_size(fd: int, rows: int, cols: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class AccessDialer:
    """Runs the sessions the server asks for. ``host_id`` returns the current host id."""

    def __init__(
        self,
        server_url: str,
        token: str,
        runtime: Runtime,
        host_id: Callable[[], str | None],
        *,
        user_agent: str = "crucible-agent",
    ) -> None:
        self.server_url = server_url
        self._token = token
        self.runtime = runtime
        self._host_id = host_id
        self._user_agent = user_agent
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}

    def handle(self, requests: list[AccessRequest]) -> None:
        """Start a thread for each request not already running."""
        for req in requests:
            with self._lock:
                if req.session_id in self._sessions:
                    continue
                session = _Session(self, req)
                self._sessions[req.session_id] = session
            threading.Thread(
                target=session.run, name=f"crucible-access-{req.session_id[-8:]}", daemon=True
            ).start()

    def container_ended(self, container_id: str) -> None:
        """End every session of a container that ended."""
        with self._lock:
            ended = [s for s in self._sessions.values() if s.req.container_id == container_id]
        for s in ended:
            s.end(f"container {container_id} ended")

    def close_all(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
        for s in sessions:
            s.end("the agent is shutting down")

    def _forget(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def _dial(self, session_id: str, dial_url: str | None = None) -> ThreadedWebSocket:
        """Dial the server back for ``session_id``: at ``dial_url`` (the replica holding the
        client's side) when the request names one, else at the agent's server URL."""
        host_id = self._host_id()
        if host_id is None:
            raise NotFoundError("not registered")
        url = websocket_url(dial_url or self.server_url, f"/v1/hosts/{host_id}/access/{session_id}")
        return ThreadedWebSocket(
            url,
            {"Authorization": f"Bearer {self._token}"},
            max_size=_CHUNK + 1024,
            open_timeout_s=10,
            user_agent=self._user_agent,
        )


class _Session:
    def __init__(self, dialer: AccessDialer, req: AccessRequest) -> None:
        self.dialer = dialer
        self.req = req
        self.ws: ThreadedWebSocket | None = None
        self.proc: ExecProcess | None = None
        self.sock: socket.socket | None = None
        self._stdin_sock: socket.socket | None = None  # ssh: stdin and stdout are a socket
        self.ssh_server: SshServer | None = None  # ssh into an OCI image: its session files
        self._send_lock = threading.Lock()
        self._ended = threading.Event()

    # -- lifecycle ----------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self.ws = self.dialer._dial(self.req.session_id, self.req.dial_url)
        except Exception as exc:
            log.warning("access session %s: cannot dial back (%s)", self.req.session_id, exc)
            self.dialer._forget(self.req.session_id)
            return
        try:
            if self.req.open.kind == "tcp":
                self._tcp()
            else:
                self._exec()
        except Error as exc:
            self._send_text({"type": "error", "code": exc.code, "message": exc.message})
        except (ConnectionClosed, OSError) as exc:
            log.debug("access session %s ended: %s", self.req.session_id, exc)
        finally:
            self._cleanup()
            self.dialer._forget(self.req.session_id)

    def end(self, why: str) -> None:
        """From another thread: kill what the session runs and close it."""
        if self._ended.is_set():
            return
        self._ended.set()
        if self.proc is not None:
            self.proc.kill()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        if self.ws is not None:
            self._send_text({"type": "error", "code": "container_exited", "message": why})
            with contextlib.suppress(Exception):
                self.ws.close()

    def _cleanup(self) -> None:
        if self.proc is not None:
            self.proc.kill()
        if self.ssh_server is not None:
            self.ssh_server.close()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.ws.close()

    # -- sending ------------------------------------------------------------------------------
    def _send_bytes(self, channel: int, data: bytes) -> None:
        assert self.ws is not None
        with self._send_lock:
            self.ws.send(bytes((channel,)) + data)

    def _send_text(self, msg: dict[str, Any]) -> None:
        if self.ws is None:
            return
        with self._send_lock, contextlib.suppress(ConnectionClosed, OSError, RuntimeError):
            self.ws.send(json.dumps(msg))

    # -- exec and ssh -------------------------------------------------------------------------
    def _exec(self) -> None:
        o = self.req.open
        env: dict[str, str] = {"TERM": o.term} if o.tty else {}
        argv, module = list(o.argv), None
        if o.kind == "ssh":
            server = self.dialer.runtime.ssh_server(
                self.req.container_id, self.req.session_id, list(self.req.ssh_keys), o.user
            )
            if server is None:  # the default image: the host's /usr is there
                argv, module = [], SSH_MODULE
                env["CRUCIBLE_SSH_KEYS"] = "\n".join(self.req.ssh_keys)
                env["CRUCIBLE_SSH_USER"] = o.user
            else:  # an OCI image: the agent's own server (agent/ssh_bundle.py)
                self.ssh_server = server
                argv = server.argv
                env.update(server.env)
        master: int | None = None
        if o.tty:
            master, slave = os.openpty()
            set_window_size(master, o.rows, o.cols)
            child = (slave, slave, slave)
            stdin_w = master
            outputs = [(master, CHANNEL_OUT)]
        elif o.kind == "ssh":
            # An SSH server in inetd mode insists on a socket (getpeername) for its stdio.
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            err_r, err_w = os.pipe()
            self._stdin_sock = ours
            stdin_w = os.dup(ours.fileno())
            shared = theirs.detach()
            child = (shared, shared, err_w)
            outputs = [(ours.detach(), CHANNEL_OUT), (err_r, CHANNEL_ERR)]
        else:
            in_r, stdin_w = os.pipe()
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            child = (in_r, out_w, err_w)
            outputs = [(out_r, CHANNEL_OUT), (err_r, CHANNEL_ERR)]
        try:
            self.proc = self.dialer.runtime.exec(
                self.req.container_id, argv, env=env, tty=o.tty, fds=child, module=module
            )
        except BaseException:
            for fd in {stdin_w, *(fd for fd, _ in outputs)}:
                os.close(fd)
            raise
        finally:
            for fd in set(child):
                os.close(fd)
        self._send_text({"type": "ready"})
        readers = [
            threading.Thread(target=self._read_fd, args=(fd, ch), daemon=True) for fd, ch in outputs
        ]
        for t in readers:
            t.start()
        threading.Thread(target=self._input_to_fd, args=(stdin_w, master), daemon=True).start()
        code = self.proc.wait()
        for t in readers:
            t.join(timeout=_DRAIN_S)
        if not self._ended.is_set():
            self._send_text({"type": "exit", "code": code if code is not None else -9})

    def _read_fd(self, fd: int, channel: int) -> None:
        try:
            while True:
                try:
                    data = os.read(fd, _CHUNK)
                except OSError:  # EIO: the terminal's last process is gone
                    return
                if not data:
                    return
                self._send_bytes(channel, data)
        except (ConnectionClosed, OSError, RuntimeError):
            if self.proc is not None:
                self.proc.kill()
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _input_to_fd(self, stdin_w: int, master: int | None) -> None:
        """Client → process. Ends (killing the process) when the client goes away."""
        assert self.ws is not None
        stdin_open = True
        try:
            for msg in self.ws:
                if isinstance(msg, bytes):
                    if msg[:1] == bytes((CHANNEL_IN,)) and stdin_open:
                        try:
                            _write_all(stdin_w, memoryview(msg)[1:])
                        except OSError:  # the process closed its stdin
                            stdin_open = False
                    continue
                control = _control(msg)
                kind = control.get("type")
                if kind == "eof" and master is None and stdin_open:
                    stdin_open = False
                    if self._stdin_sock is not None:  # its read side stays open
                        with contextlib.suppress(OSError):
                            socket.socket(fileno=os.dup(stdin_w)).shutdown(socket.SHUT_WR)
                    os.close(stdin_w)
                elif kind == "resize" and master is not None:
                    rows, cols = _size(control)
                    set_window_size(master, rows, cols)
        except (ConnectionClosed, OSError, RuntimeError):
            pass
        finally:
            if master is None and stdin_open:
                with contextlib.suppress(OSError):
                    os.close(stdin_w)
            if self.proc is not None and self.proc.wait(0) is None:
                self.proc.kill()  # the client went away

    # -- tcp ------------------------------------------------------------------------------------
    def _tcp(self) -> None:
        port = self.req.open.port
        assert port is not None and self.ws is not None
        self.sock = sock = self.dialer.runtime.connect(self.req.container_id, port)
        self._send_text({"type": "ready"})
        back = threading.Thread(target=self._sock_to_ws, args=(sock,), daemon=True)
        back.start()
        try:
            for msg in self.ws:
                if isinstance(msg, bytes):
                    if msg[:1] == bytes((CHANNEL_IN,)):
                        sock.sendall(memoryview(msg)[1:])
                elif _control(msg).get("type") == "eof":
                    sock.shutdown(socket.SHUT_WR)
        except (ConnectionClosed, OSError):
            pass
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        back.join(timeout=_DRAIN_S)

    def _sock_to_ws(self, sock: socket.socket) -> None:
        try:
            while True:
                data = sock.recv(_CHUNK)
                if not data:
                    break
                self._send_bytes(CHANNEL_OUT, data)
        except (ConnectionClosed, OSError, RuntimeError):
            pass
        # The port closed its side: the session is over.
        self._send_text({"type": "exit", "code": 0})
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.ws.close()


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _control(text: str) -> dict[str, Any]:
    try:
        msg = json.loads(text)
    except ValueError:
        return {}
    return msg if isinstance(msg, dict) else {}


def _size(control: dict[str, Any]) -> tuple[int, int]:
    def clamp(v: Any, default: int) -> int:
        return min(max(v, 1), 10_000) if isinstance(v, int) else default

    return clamp(control.get("rows"), 24), clamp(control.get("cols"), 80)
