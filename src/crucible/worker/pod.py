"""The pod supervisor: what a pod's container runs in place of a function's worker.

The worker's entry point hands over here when its assignment carries a pod
(``ContainerAssignment.pod``). The supervisor

- starts the pod's command (``sh -c COMMAND``; without one, an OCI image's ENTRYPOINT and
  CMD; without either, waits until the pod is stopped) in the container's process group, in
  the OCI image's WORKDIR or else the pod's disk (``$CRUCIBLE_POD_DISK``, kept by the agent
  across stop/start) with ``$HOME`` there, and the pod's environment (built from scratch:
  the image's ENV, then the exchange's, then the pod's; never the supervisor's own, so no
  ``PYTHONHOME`` of the agent's interpreter that an OCI pod's supervisor runs with,
  :mod:`crucible.agent.python_bundle`);
- fills the pod's volumes (their latest versions, as for a function);
- tells the control plane the pod runs (one exchange asking for no input: that marks the
  container running, and metering counts from its start);
- ships every line the command prints to the control plane (``crucible pod logs``) and to
  its own stdout (the agent's log of the container);
- outlives the agent's SIGTERM (which reaches the command too) until the command ends, so
  its last words are shipped (the agent's grace, then SIGKILL, bounds the rest), and keeps
  the disk within its size: past it, the command is killed and the
  container fails with a message saying so;
- exits with the command's status.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import IO

from crucible.agent.parent_death import die_with_parent, load_prctl
from crucible.agent.python_bundle import PYTHON_HOME, python_argv
from crucible.errors import Error
from crucible.protocol.containers import ContainerAssignment
from crucible.protocol.pods import pod_env
from crucible.protocol.transport import Transport
from crucible.sdk._client import Client
from crucible.sdk._volumes import mount_volumes
from crucible.worker.logs import LogShipper

__all__ = ["DISK_CHECK_S", "disk_usage_bytes", "supervise"]

DISK_CHECK_S = 2.0
# Nothing to run: wait until stopped (SIGTERM ends it).
_IDLE = ["-c", "import signal; signal.pause()"]


def _idle() -> tuple[list[str], dict[str, str]]:
    """The command that waits until stopped, and its own environment: this interpreter's,
    started through the bundled loader when it is the agent's brought into an OCI image."""
    if sys.executable.startswith(PYTHON_HOME + "/"):
        return [*python_argv(), *_IDLE], {"PYTHONHOME": PYTHON_HOME}
    return [sys.executable, *_IDLE], {}


def disk_usage_bytes(root: Path, *, open_in_session: int | None = None) -> int:
    """Bytes the files under ``root`` occupy (allocated blocks, like ``du``: a file with
    several names counts once), with what a plain walk misses, so a pod cannot hide data
    from its disk's size: a directory the pod made unreadable is opened again (the pod runs
    as this process's user, who may), and with ``open_in_session`` (the pod's session) a
    file deleted under ``root`` while its processes still hold it open counts until closed."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [str(root)]
    while stack:
        top = stack.pop()
        try:
            entries = list(os.scandir(top))
        except PermissionError:
            try:
                os.chmod(top, stat.S_IMODE(os.lstat(top).st_mode) | stat.S_IRWXU)
                entries = list(os.scandir(top))
            except OSError:
                continue
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
    if open_in_session is not None:
        total += _deleted_but_open(str(root), open_in_session, seen)
    return total


def _deleted_but_open(root: str, session: int, seen: set[tuple[int, int]]) -> int:
    """Blocks of the files under ``root`` that were deleted while a process of ``session``
    held them open (``/proc/PID/fd``): they take space until the last one closes."""
    total = 0
    prefix = root.rstrip("/") + "/"
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                # After the command's name: state, ppid, pgrp, session, ...
                if int(f.read().rsplit(b")", 1)[1].split()[3]) != session:
                    continue
            fds = os.listdir(f"/proc/{pid}/fd")
        except (OSError, ValueError, IndexError):
            continue
        for fd in fds:
            path = f"/proc/{pid}/fd/{fd}"
            try:
                target = os.readlink(path)
                if not (target.startswith(prefix) and target.endswith(" (deleted)")):
                    continue
                st = os.stat(path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _pump(stream: IO[bytes], name: str, shipper: LogShipper, out: IO[str]) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        shipper.add(name, line)
        with contextlib.suppress(OSError, ValueError):
            out.write(line + "\n")
            out.flush()


def supervise(assignment: ContainerAssignment, transport: Transport) -> int:
    """Run the pod of ``assignment`` until its command ends; returns its exit status."""
    pod = assignment.pod
    assert pod is not None
    disk = Path(os.environ.get("CRUCIBLE_POD_DISK") or os.getcwd())
    disk.mkdir(parents=True, exist_ok=True)
    # An OCI image's ENV first (its PATH among them), then the exchange's, then the pod's
    # (the same as its sessions get: protocol/pods.pod_env).
    env = pod_env(pod, os.environ, disk=str(disk), python_dir=os.path.dirname(sys.executable))
    # The pod's command, else its OCI image's ENTRYPOINT + CMD, else wait until stopped.
    image_argv = json.loads(os.environ.get("CRUCIBLE_POD_IMAGE_ARGV") or "[]")
    argv = ["/bin/sh", "-c", pod.command] if pod.command else [str(x) for x in image_argv]
    if not argv:
        argv, own = _idle()
        env = {**env, **own}
    # An OCI image's WORKDIR, as docker run starts there; without one ("/", what an image
    # that sets none reports), the pod's disk.
    workdir = os.environ.get("CRUCIBLE_POD_IMAGE_WORKDIR") or "/"
    cwd = workdir if workdir != "/" and os.path.isdir(workdir) else str(disk)
    shipper = LogShipper(transport, assignment.container_id)
    shipper.install(descriptors=False)  # the command's output is pumped below (_pump)
    if assignment.volumes:
        # The volumes' latest versions at their mount paths (bound in by a sandboxed agent).
        try:
            mount_volumes(Client.in_container(), assignment.volumes)
        except (Error, OSError) as exc:
            why = exc.message if isinstance(exc, Error) else f"could not mount its volumes: {exc}"
            print(f"crucible pod: {why}", file=sys.stderr)
            shipper.close()
            return 1
    out, err = sys.__stdout__, sys.__stderr__
    assert out is not None and err is not None
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # In the supervisor's own process group: the agent's SIGTERM (and its SIGKILL
            # after the grace) reach the command and everything it started, and the runtime
            # kills what is left of the group when the supervisor exits. The command dies
            # with the supervisor (which dies with the agent); what it started is ended by
            # the next agent (runtime.py: _end_left_behind).
            preexec_fn=functools.partial(die_with_parent, load_prctl(), os.getpid()),
        )
    except OSError as exc:
        print(f"crucible pod: cannot start the command: {exc}", file=sys.stderr)
        shipper.close()
        return 127
    full = threading.Event()
    done = threading.Event()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        # The command got the same signal (the agent signals the whole group): wait for it
        # to end, shipping what it prints meanwhile.
        return

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    def watch_disk() -> None:
        while not done.wait(DISK_CHECK_S):
            used = disk_usage_bytes(disk, open_in_session=os.getsid(0))
            if used > pod.disk_bytes:
                print(
                    f"crucible pod: the pod's disk holds {used / 2**30:.2f} GiB, over its "
                    f"{pod.disk_bytes / 2**30:.2f} GiB; the command was stopped. Free space "
                    "or create the pod with a larger --disk",
                    file=sys.stderr,
                )
                full.set()
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(proc.pid, signal.SIGKILL)
                return

    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, "stdout", shipper, out), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, "stderr", shipper, err), daemon=True),
        threading.Thread(target=watch_disk, name="crucible-pod-disk", daemon=True),
    ]
    for t in pumps:
        t.start()
    try:
        # One exchange asking for nothing: the container is running from now on.
        transport.post(
            f"/v1/containers/{assignment.container_id}/exchange",
            {"outputs": [], "want": 0, "wait_s": 0},
        )
    except Exception as exc:  # the command runs anyway; the server learns of it on its sync
        print(f"crucible pod: could not report the start: {exc}", file=sys.stderr)
    rc = proc.wait()
    done.set()
    for t in pumps[:2]:
        t.join(timeout=5)
    if full.is_set():
        rc = 1
    shipper.close()
    return rc if rc >= 0 else 128 - rc
