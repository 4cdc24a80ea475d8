"""The ``process`` runtime: each container is a plain child process of the agent.

This runtime gives no isolation beyond a fresh working directory, a minimal environment and
its own process group: the worker runs as the agent's user. It is the default for a developer's
own machine (``crucible up``); sandboxed runtimes (bubblewrap, OCI) build on the same contract:

- :meth:`ProcessRuntime.start` spawns a container for an assignment (idempotent per id),
- :meth:`ProcessRuntime.poll` reports every known container,
- :meth:`ProcessRuntime.stop` asks one to stop (SIGTERM, then SIGKILL after a grace period),
- :meth:`ProcessRuntime.forget` drops an exited container once the server has heard of its end.

Layout on disk, under ``agent_dir``::

    containers/<container_id>/assignment.json   the assignment (holds the container token; 0600)
    containers/<container_id>/log               the worker's stdout and stderr, appended
    containers/<container_id>/work/             the worker's cwd and $HOME
    code/                                       code cache shared by workers (CRUCIBLE_CODE_CACHE)

Exit statuses follow :mod:`subprocess`: ``exit_code`` is the status a process returned, or
``-N`` when signal ``N`` ended it; ``reason`` says who ended it (see :class:`ContainerReport`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from crucible.agent.exec_process import PopenExec, exec_env
from crucible.agent.exec_process import take_ctty as _take_ctty
from crucible.agent.log_tail import read_log_tail
from crucible.agent.parent_death import die_with_parent, load_prctl, pid_alive
from crucible.agent.pod_images import pod_disk_dir, resolve_pod_image
from crucible.agent.sandbox import agent_ca_bundle
from crucible.agent.ssh_bundle import SshServer
from crucible.errors import (
    ImageBuildError,
    ImageUnsupportedError,
    InvalidRequestError,
    NotFoundError,
)
from crucible.protocol.common import ErrorInfo
from crucible.protocol.containers import ContainerAssignment, ContainerReport
from crucible.protocol.pods import PodAssignment, pod_env

__all__ = ["ProcessRuntime"]

log = logging.getLogger(__name__)

_MESSAGE_MAX_CHARS = 8000
# Container ids become directory names: refuse anything that could escape containers/.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


_GROUP_FILE = "group"  # a container's process group, agent and marker, for the next agent


def _live_groups() -> dict[int, list[Path]]:
    """The /proc entries of every live process, by process group (one pass over /proc)."""
    groups: dict[int, list[Path]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after it.
            groups.setdefault(int(stat.rsplit(")", 1)[1].split()[2]), []).append(proc)
        except (OSError, ValueError, IndexError):
            continue
    return groups


def _carries(procs: list[Path], marker: bytes) -> bool:
    """Whether one of these processes has ``marker`` in its environment."""
    for proc in procs:
        with contextlib.suppress(OSError):
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                return True
    return False


def _crucible_import_root() -> str | None:
    """The directory holding the ``crucible`` package the agent runs, when it is a source tree.

    Workers are started as ``python -m crucible.worker``; adding this root to their PYTHONPATH
    makes them import the very code the agent runs even when crucible is not installed (a
    checkout used through PYTHONPATH). An installed package needs nothing.
    """
    root = Path(__file__).resolve().parents[2]
    if root.name in ("site-packages", "dist-packages"):
        return None
    return str(root)


@dataclass
class _Container:
    container_id: str
    dir: Path | None
    started_at: float
    proc: subprocess.Popen[bytes] | None = None
    stop_requested: bool = False
    escalated: bool = False
    kill_timer: threading.Timer | None = None
    # Set once the process has ended (or failed to start); the record is then final.
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    log_tail: list[str] | None = None  # its last lines, when it crashed
    env: dict[str, str] = field(default_factory=dict)  # the worker's (exec sessions start from it)
    pod: PodAssignment | None = None  # a pod's: its sessions get the pod's environment

    @property
    def exited(self) -> bool:
        return self.reason is not None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class ProcessRuntime:
    """Runs containers as child processes of the agent. Thread-safe.

    ``worker_argv`` is the command a container runs (default
    ``[sys.executable, "-m", "crucible.worker"]``); tests substitute small scripts.
    ``on_exit`` is called once per container, outside the runtime's lock and from whichever
    thread noticed the end (a watcher thread, or the caller of :meth:`poll`/:meth:`start`),
    with the container's final report.

    Children get ``PR_SET_PDEATHSIG=SIGKILL``, so they die with the agent. Linux ties that
    signal to the *thread* that spawned the child: call :meth:`start` from a thread that lives
    as long as the containers it starts (the agent's loop threads do).
    """

    def __init__(
        self,
        agent_dir: Path,
        server_url: str,
        *,
        worker_argv: list[str] | None = None,
        stop_grace_s: float = 5.0,
        on_exit: Callable[[ContainerReport], None] | None = None,
    ) -> None:
        self.agent_dir = Path(agent_dir)
        self.server_url = server_url
        self.worker_argv = (
            list(worker_argv) if worker_argv else [sys.executable, "-m", "crucible.worker"]
        )
        self.stop_grace_s = stop_grace_s
        self.on_exit = on_exit
        self._containers: dict[str, _Container] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._prctl = load_prctl()
        self.containers_dir.mkdir(parents=True, exist_ok=True)
        self.code_cache_dir.mkdir(parents=True, exist_ok=True)
        # Container dirs hold container tokens and builders' files: keep other users out.
        # (Only the dir we own outright; agent_dir itself may be shared.)
        with contextlib.suppress(OSError):
            self.containers_dir.chmod(0o700)
        self._end_left_behind()

    def _end_left_behind(self) -> None:
        """Kill what a previous agent on this directory left running: the process groups of
        its containers (recorded at start, with the agent's pid), when that agent is gone
        (another agent started on the same directory is not robbed of its containers) and a
        process of the group still carries the container's id, or its pod's (a pid reused
        since is someone else's, and is left alone)."""
        records = list(self.containers_dir.glob(f"*/{_GROUP_FILE}"))
        groups = _live_groups() if records else {}
        for record in records:
            with contextlib.suppress(OSError, ValueError):
                pgid_text, agent_text, marker = record.read_text().split()
                pgid, agent = int(pgid_text), int(agent_text)
                if agent != os.getpid() and pid_alive(agent):
                    continue  # another agent on this directory runs it: not left behind
                if _carries(groups.get(pgid, []), marker.encode()):
                    log.warning(
                        "ending the processes container %s left (%s) when its agent died",
                        record.parent.name,
                        marker,
                    )
                    os.killpg(pgid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                record.unlink()

    @property
    def containers_dir(self) -> Path:
        return self.agent_dir / "containers"

    @property
    def code_cache_dir(self) -> Path:
        return self.agent_dir / "code"

    # -- public API ---------------------------------------------------------------------------
    def knows(self, container_id: str) -> bool:
        """True while a record exists for the id (running or exited but not yet forgotten)."""
        with self._lock:
            return container_id in self._containers

    def start(self, assignment: ContainerAssignment) -> None:
        """Spawn the worker for ``assignment``; a no-op when the id is already known.

        Never raises for a bad assignment or a failed spawn: the container is recorded as
        exited with reason ``start_failed`` and a message, which the next :meth:`poll` reports.
        """
        cid = assignment.container_id
        with self._lock:
            if cid in self._containers:
                return
            if not _SAFE_ID.match(cid):
                c = _Container(cid, None, time.monotonic())
                self._finish(c, None, "start_failed", f"invalid container id {cid!r}")
                self._containers[cid] = c
                failed: _Container | None = c
            else:
                c = _Container(cid, self.containers_dir / cid, time.monotonic())
                self._containers[cid] = c
                failed = None if self._spawn(c, assignment) else c
        if failed is not None:
            self._notify(failed)
            return
        # One watcher per container: it blocks in waitid() so exits are noticed at once,
        # without polling and without reaping behind the lock's back.
        threading.Thread(
            target=self._watch, args=(c,), name=f"crucible-watch-{cid}", daemon=True
        ).start()

    def poll(self) -> list[ContainerReport]:
        """A report for every known container, in start order.

        ``running`` (with ``pid``) while the process lives: readiness is the worker's business
        and the server learns it from the worker's own requests, so this runtime never reports
        ``starting``. ``exited`` once it ended, with ``exit_code`` and ``reason``:

        - ``stopped``: the agent asked it to stop (:meth:`stop`), however it then ended;
        - ``killed``: a signal the agent did not send (OOM killer, an operator); the message
          names the signal;
        - ``exited``: it returned by itself; for a non-zero status the message is the last
          lines of its log, so builders see the crash;
        - ``start_failed``: it could not be spawned.
        """
        newly: list[_Container] = []
        with self._lock:
            for c in self._containers.values():
                if not c.exited and self._check_exit(c, block=False):
                    newly.append(c)
            reports = [self._report(c) for c in self._containers.values()]
        for c in newly:
            self._notify(c)
        return reports

    def stop(self, container_id: str, grace_s: float | None = None) -> bool:
        """SIGTERM the container's process group now, SIGKILL it ``grace_s`` later (default:
        ``stop_grace_s``; a preemption brings its own).

        Returns at once (a timer escalates). Idempotent: True only for the call that sent
        SIGTERM; unknown, exited and already-stopping ids are ignored (False).
        """
        with self._lock:
            c = self._containers.get(container_id)
            if c is None or c.exited or c.stop_requested or c.proc is None:
                return False
            c.stop_requested = True
            self._signal_group(c, signal.SIGTERM)
            delay = self.stop_grace_s if grace_s is None else max(0.0, grace_s)
            timer = threading.Timer(delay, self._escalate, args=(c,))
            timer.daemon = True
            c.kill_timer = timer
            timer.start()
            return True

    def forget(self, container_id: str) -> bool:
        """Drop an exited container's record and delete its directory.

        Call it once the server acknowledged the exit. Returns False (and keeps everything)
        when the id is unknown or the container is still running.
        """
        with self._lock:
            c = self._containers.get(container_id)
            if c is None or not c.exited:
                return False
            del self._containers[container_id]
        if c.dir is not None:
            shutil.rmtree(c.dir, ignore_errors=True)
        return True

    def stop_all(self, timeout_s: float | None = None) -> None:
        """Stop every container and wait until all have ended (for shutdown).

        Waits at most ``timeout_s`` (default: the stop grace plus 2 s, enough for the SIGKILL
        escalation to land); exits are recorded, so a final :meth:`poll` reports them.
        """
        with self._lock:
            ids = [cid for cid, c in self._containers.items() if not c.exited]
        for cid in ids:
            self.stop(cid)
        deadline = time.monotonic() + (self.stop_grace_s + 2.0 if timeout_s is None else timeout_s)
        with self._changed:
            while any(not c.exited for c in self._containers.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(min(left, 0.1))
        self.poll()  # records exits a watcher has not yet taken the lock for

    # -- internals (callers hold self._lock unless stated) -------------------------------------
    # -- access sessions (agent/access.py) --------------------------------------------------------
    def exec(
        self,
        container_id: str,
        argv: list[str],
        *,
        env: dict[str, str],
        tty: bool,
        fds: tuple[int, int, int],
        module: str | None = None,
    ) -> PopenExec:
        """Start ``argv`` (or ``python -m module``) beside a running container: its work
        directory and environment (without its token) plus ``env``, stdio on ``fds``, a
        session of its own (``tty``: fds[0] becomes its controlling terminal). Raises
        NotFoundError when the container is not running here, InvalidRequestError when the
        program does not exist."""
        with self._lock:
            c = self._containers.get(container_id)
            if c is None or c.exited or c.proc is None or c.dir is None:
                raise NotFoundError(f"container {container_id} is not running on this host")
            base = exec_env(c.env)
            # A pod's sessions start in its disk, as its command does, and see what it sees
            # (its --env, its ports' paths, its python first on PATH); a function's in its work.
            pod_disk = c.env.get("CRUCIBLE_POD_DISK")
            cwd = Path(pod_disk) if pod_disk else c.dir / "work"
            if pod_disk and c.pod is not None:
                base |= pod_env(
                    c.pod, c.env, disk=pod_disk, python_dir=os.path.dirname(sys.executable)
                )
            elif pod_disk:
                base["HOME"] = pod_disk
        if module is not None:
            argv = [sys.executable, "-m", module]
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=base | env,
                stdin=fds[0],
                stdout=fds[1],
                stderr=fds[2],
                start_new_session=True,
                preexec_fn=_take_ctty if tty else None,
                close_fds=True,
            )
        except FileNotFoundError:
            raise InvalidRequestError(
                f"no program {argv[0]!r} in container {container_id}; an image without it "
                "(e.g. without a shell) cannot run it: name a program the image has"
            ) from None
        except OSError as exc:
            raise InvalidRequestError(f"cannot run {argv[0]!r}: {exc.strerror}") from None
        return PopenExec(proc)

    def ssh_server(
        self, container_id: str, session_id: str, keys: list[str], login: str
    ) -> SshServer | None:
        """None: a process container runs no OCI image, and its SSH sessions run
        ``python -m crucible.worker.sshd`` with the host's dropbear."""
        return None

    def connect(self, container_id: str, port: int) -> socket.socket:
        """A TCP connection to ``port`` of a running container (the host's network: a
        process container has no namespace of its own)."""
        with self._lock:
            c = self._containers.get(container_id)
            if c is None or c.exited:
                raise NotFoundError(f"container {container_id} is not running on this host")
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError as exc:
            raise InvalidRequestError(
                f"nothing accepts connections on port {port} inside the container "
                f"({exc.strerror or exc})"
            ) from None

    def _spawn(self, c: _Container, a: ContainerAssignment) -> bool:
        assert c.dir is not None
        try:
            work = c.dir / "work"
            work.mkdir(parents=True, exist_ok=True)
            assignment_path = c.dir / "assignment.json"
            fd = os.open(assignment_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(a.model_dump_json())
            env = self._worker_env(a, work, assignment_path)
            if a.pod is not None:
                # The pod's image (the default: the host's own root) and its disk, kept
                # under pods/<pod id>/disk across stop/start (docs/pods.md).
                resolve_pod_image(a.pod.image)
                disk = pod_disk_dir(self.agent_dir, a.pod.pod_id)
                env["CRUCIBLE_POD_DISK"] = str(disk)
            c.env = env
            c.pod = a.pod
            with open(c.dir / "log", "ab") as logf:
                c.proc = subprocess.Popen(
                    self.worker_argv,
                    cwd=work,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group: stop() signals the whole tree
                    preexec_fn=functools.partial(die_with_parent, self._prctl, os.getpid()),
                    close_fds=True,
                )
            # The group outlives a killed agent when a pod's command left children behind
            # (the worker dies with the agent, they do not): the next agent ends it.
            # A pod's processes carry its id (not the container's) in their environment.
            marker = (
                f"CRUCIBLE_POD_ID={a.pod.pod_id}"
                if a.pod is not None
                else f"CRUCIBLE_CONTAINER_ID={a.container_id}"
            )
            (c.dir / _GROUP_FILE).write_text(f"{c.proc.pid} {os.getpid()} {marker}\n")
        except (OSError, subprocess.SubprocessError) as exc:
            self._finish(c, None, "start_failed", f"cannot start the worker: {exc}")
            return False
        except ImageBuildError as exc:
            self._finish(c, None, "start_failed", exc.message)
            return False
        return True

    def _worker_env(self, a: ContainerAssignment, work: Path, assignment: Path) -> dict[str, str]:
        """The worker's whole environment. Built from scratch, never copied from the agent's,
        so the agent's own token (CRUCIBLE_TOKEN) and other secrets cannot leak into builders'
        code; the container token only lets it exchange its own inputs."""
        devices = ",".join(str(i) for i in a.gpu_indices)
        env = dict(a.image.env) if a.image is not None else {}
        env |= {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(work),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            # Tracebacks and prints reach the log as they happen, so a crash's last words
            # are in the log tail even when the process is killed.
            "PYTHONUNBUFFERED": "1",
            "CRUCIBLE_SERVER_URL": self.server_url,
            "CRUCIBLE_CONTAINER_ID": a.container_id,
            "CRUCIBLE_CONTAINER_TOKEN": a.token,
            "CRUCIBLE_ASSIGNMENT": str(assignment),
            "CRUCIBLE_CODE_CACHE": str(self.code_cache_dir),
            # Only the assigned devices are visible. With no GPU assigned the value is the
            # empty string, not unset: CUDA then sees no device at all, whereas an unset
            # variable would expose every GPU on the host to a CPU-only container.
            "CUDA_VISIBLE_DEVICES": devices,
            "NVIDIA_VISIBLE_DEVICES": devices,
            # Indices are NVML's, which follow PCI bus order; CUDA's default order (fastest
            # first) can differ on hosts with mixed GPUs.
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        }
        ca = agent_ca_bundle()
        if ca is not None:  # the CA the agent trusts for the exchange
            env["SSL_CERT_FILE"] = str(ca)
        if a.image is not None and a.image.registry is not None:
            env["CRUCIBLE_INIT_ERROR"] = ErrorInfo(
                code=ImageUnsupportedError.code,
                message=f"this host runs the `process` runtime, which cannot run the OCI image "
                f"{a.image.registry}; run its agent with --runtime bwrap",
            ).model_dump_json()
        elif a.image is not None and a.image.steps:
            # Queued calls would wait forever on a container that cannot start: run the worker
            # anyway and let it fail them with the reason.
            env["CRUCIBLE_INIT_ERROR"] = ErrorInfo(
                code=ImageBuildError.code,
                message="this host runs the `process` runtime, which builds no images; run "
                "its agent with --runtime bwrap, or drop the image's build steps",
            ).model_dump_json()
        paths = [p for p in (_crucible_import_root(), os.environ.get("PYTHONPATH")) if p]
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(paths)
        return env

    def _watch(self, c: _Container) -> None:
        """Watcher thread: wait for the process to end without reaping it, then record it."""
        assert c.proc is not None
        with contextlib.suppress(ChildProcessError):  # already reaped by poll()
            os.waitid(os.P_PID, c.proc.pid, os.WEXITED | os.WNOWAIT)
        with self._lock:
            newly = not c.exited and self._check_exit(c, block=True)
        if newly:
            self._notify(c)

    def _check_exit(self, c: _Container, *, block: bool) -> bool:
        """Record the exit if the process has ended; True when this call recorded it."""
        proc = c.proc
        if proc is None or c.exited:
            return False
        if not block:
            try:
                if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                    return False  # still running
            except ChildProcessError:
                pass  # reaped by someone else: it is gone, and proc.wait() returns at once
        # The process is a zombie now, which keeps its process-group id from being reused:
        # kill anything it left behind in its group before reaping it, so a finished container
        # cannot keep a GPU busy.
        self._signal_group(c, signal.SIGKILL)
        rc = proc.wait()
        if c.kill_timer is not None:
            c.kill_timer.cancel()
        if c.stop_requested:
            how = "after SIGKILL (it ignored SIGTERM)" if c.escalated else "after SIGTERM"
            self._finish(c, rc, "stopped", f"stopped by the agent; ended {how}")
        elif rc < 0:
            name = _signal_name(-rc)
            message = f"killed by {name}, a signal the agent did not send (out of memory?)"
            tail = self._log_tail(c)
            if tail:
                message += f"; last lines of its log:\n{tail}"
            self._finish(c, rc, "killed", message)
        else:
            message = None
            if rc != 0:
                tail = self._log_tail(c)
                message = f"worker exited with status {rc}" + (
                    f"; last lines of its log:\n{tail}" if tail else ""
                )
            self._finish(c, rc, "exited", message)
        return True

    def _escalate(self, c: _Container) -> None:
        with self._lock:
            if c.exited or c.proc is None or c.proc.returncode is not None:
                return
            c.escalated = True
            self._signal_group(c, signal.SIGKILL)

    def _signal_group(self, c: _Container, sig: signal.Signals) -> None:
        if c.proc is None or c.proc.returncode is not None:
            return  # reaped: its pid may belong to someone else by now
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(c.proc.pid, sig)

    def _finish(self, c: _Container, rc: int | None, reason: str, message: str | None) -> None:
        c.exit_code = rc
        c.reason = reason
        c.message = message[-_MESSAGE_MAX_CHARS:] if message else message
        self._changed.notify_all()

    def _log_tail(self, c: _Container) -> str:
        """The container's last lines, for its crash message; kept for its exit report."""
        c.log_tail = read_log_tail(c.dir) or None
        return "\n".join(c.log_tail or ())

    @staticmethod
    def _report(c: _Container) -> ContainerReport:
        if c.exited:
            return ContainerReport(
                container_id=c.container_id,
                state="exited",
                pid=c.pid,
                exit_code=c.exit_code,
                reason=c.reason,
                message=c.message,
                log_tail=c.log_tail,
            )
        return ContainerReport(container_id=c.container_id, state="running", pid=c.pid)

    def _notify(self, c: _Container) -> None:
        # Outside the lock: the callback may call back into the runtime (poll, forget).
        if self.on_exit is None:
            return
        with self._lock:
            report = self._report(c)
        try:
            self.on_exit(report)
        except Exception:
            log.exception("on_exit callback failed for container %s", c.container_id)
