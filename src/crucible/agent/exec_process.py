"""Processes an access session starts beside a container (exec, an SSH server), as the
runtimes hand them to :mod:`crucible.agent.access`: wait for the end, kill."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import termios
import threading

__all__ = ["PRIVATE_ENV", "ExecProcess", "PopenExec", "ZygoteExec", "exec_env", "take_ctty"]

# Never in an exec session's environment: the container's own credentials and files.
PRIVATE_ENV = ("CRUCIBLE_CONTAINER_TOKEN", "CRUCIBLE_ASSIGNMENT", "CRUCIBLE_INIT_ERROR")


def exec_env(container_env: dict[str, str]) -> dict[str, str]:
    """A session's environment: the container's, without its token."""
    return {k: v for k, v in container_env.items() if k not in PRIVATE_ENV}


def take_ctty() -> None:
    """In a child after setsid(): its stdin (a terminal) becomes its controlling tty, so
    Ctrl-C typed in the client's terminal reaches its foreground process group."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class ExecProcess:
    """The base: wait() → exit status (``-N`` for a signal) or None on timeout; kill()."""

    def wait(self, timeout_s: float | None = None) -> int | None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError


class PopenExec(ExecProcess):
    """A child process of the agent (the ``process`` runtime), in a session of its own."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    def wait(self, timeout_s: float | None = None) -> int | None:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGKILL)


class ZygoteExec(ExecProcess):
    """A process the sandbox's zygote forked; its end arrives as an ``exec-exited`` message
    (:meth:`finish`). kill() asks the zygote through ``kill``, a callable."""

    def __init__(self, session_id: str, kill: object) -> None:
        self.session_id = session_id
        self._kill = kill
        self._done = threading.Event()
        self.status: int | None = None
        self.error: str | None = None

    def finish(self, status: int, error: str | None = None) -> None:
        if not self._done.is_set():
            self.status, self.error = status, error
            self._done.set()

    def wait(self, timeout_s: float | None = None) -> int | None:
        if not self._done.wait(timeout_s):
            return None
        return self.status

    def kill(self) -> None:
        if not self._done.is_set() and callable(self._kill):
            self._kill()
