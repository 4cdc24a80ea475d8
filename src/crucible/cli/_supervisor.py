"""The embedded exchange's processes, supervised: `crucible up` runs the control plane and the
agent as children that are restarted, with backoff, whenever they die. Stopping a supervisor
stops its child (SIGTERM, a grace, then SIGKILL); if the supervising process itself dies, the
kernel sends its children SIGTERM (parent-death signal), so nothing is left running either
way."""

from __future__ import annotations

import ctypes
import functools
import logging
import signal
import subprocess
import threading
import time
from typing import Any

__all__ = ["ProcessSupervisor", "restart_delay_s"]

log = logging.getLogger("crucible.up")

_PR_SET_PDEATHSIG = 1


def restart_delay_s(failures: int, *, first_s: float = 1.0, cap_s: float = 30.0) -> float:
    """Wait before restart number ``failures`` in a row (1 = the first): 1, 2, 4 ... 30 s."""
    return float(min(cap_s, first_s * 2 ** max(0, failures - 1)))


def _term_with_parent(prctl: Any) -> None:
    """In the child, between fork and exec (no imports, no locks): receive SIGTERM when the
    thread that started it ends (the supervisor's, which lives as long as `crucible up`)."""
    prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


class ProcessSupervisor:
    """Keeps one process (``name``: the agent, the control plane) running until :meth:`stop`.

    A process that ran for ``stable_s`` before exiting is restarted after the shortest delay;
    one that keeps dying waits longer each time (:func:`restart_delay_s`)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        stop_grace_s: float,
        stable_s: float = 60.0,
        max_delay_s: float = 30.0,
    ) -> None:
        self.name = name
        self.max_delay_s = max_delay_s
        self.argv = argv
        self.stop_grace_s = stop_grace_s
        self.stable_s = stable_s
        self.restarts = 0
        self.last_exit: int | None = None
        self._stop = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._run, name=f"{name}-supervisor", daemon=True)
        # Resolved here: the child must not load libraries between fork and exec.
        self._prctl = ctypes.CDLL(None).prctl

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> None:
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            # Its own session: a terminal's Ctrl-C reaches only `crucible up`, which stops the
            # agent before the control plane (so the agent's last report is received).
            start_new_session=True,
            preexec_fn=functools.partial(_term_with_parent, self._prctl),
        )

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._proc = proc = self._spawn()
            started = time.monotonic()
            while proc.poll() is None and not self._stop.is_set():
                self._stop.wait(0.5)
            if self._stop.is_set():
                # Stopped here, by the thread that started it: its parent-death signal
                # fires only once this thread ends, after the child is gone.
                self._terminate(proc)
                return
            self.last_exit = proc.returncode
            failures = 1 if time.monotonic() - started >= self.stable_s else failures + 1
            delay = restart_delay_s(failures, cap_s=self.max_delay_s)
            self.restarts += 1
            log.warning(
                "the %s exited (code %s); restarting it in %.0f s (restart %d)",
                self.name,
                proc.returncode,
                delay,
                self.restarts,
            )
            self._stop.wait(delay)

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=self.stop_grace_s + 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """Stop the process (SIGTERM, its grace, SIGKILL) and the supervision; idempotent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.stop_grace_s + 10)
