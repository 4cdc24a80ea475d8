"""The ``bwrap`` runtime: containers forked by warm zygotes inside bubblewrap sandboxes.

Same contract as :class:`crucible.agent.runtime.ProcessRuntime` (``start``, ``poll``,
``stop``, ``forget``, ``stop_all``, ``knows``), different mechanics:

1. :meth:`SandboxRuntime.start` records the container as ``starting`` and queues it for the
   launcher thread, so a slow image build never blocks the agent's sync loop.
2. The launcher builds the image if this host has not (in a build thread, through
   :class:`crucible.agent.images.ImageCache`), then finds or starts the zygote for
   (account, image, network, GPUs): a sandbox (:mod:`crucible.agent.sandbox`) whose Python
   has imported the image's preloaded modules and the worker.
3. The agent fetches the code bundle with the container's token and places it in the
   sandbox's read-only code directory, opens the container's log file, and asks the zygote to
   fork. The child applies its own limits and runs the worker.
4. The zygote reports each child's start and exit over its control socket; a zygote that
   dies takes its containers with it, and they are reported ``killed``.

The launcher is one long-lived thread because bwrap's ``--die-with-parent`` is tied to the
thread that spawned it. Zygotes with no container for ``zygote_idle_s`` are ended.

Containers of one zygote share its namespaces: they can see each other's processes and work
directories. They belong to the same account and image, so this costs no isolation between
tenants (see docs/sandbox.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crucible.agent.cgroups import SandboxCgroup, sandbox_cgroup
from crucible.agent.clusternet import ClusterNetworks, free_udp_port
from crucible.agent.egress import EgressError, EgressPlan, plan_egress
from crucible.agent.exec_process import ZygoteExec, exec_env
from crucible.agent.images import BuiltImage, ImageCache, host_python_paths
from crucible.agent.log_tail import read_log_tail
from crucible.agent.oci.cache import OciImages, ensure_mount_point
from crucible.agent.oci.function_image import FunctionImage, prepare_function_image
from crucible.agent.oci.python import WorkerDeps
from crucible.agent.oci.registry import RegistryAuth
from crucible.agent.pod_images import POD_DISK_PATH, pod_disk_dir, resolve_pod_image
from crucible.agent.python_bundle import PYTHON_HOME, PythonBundle
from crucible.agent.runtime import _crucible_import_root
from crucible.agent.sandbox import (
    CA_BUNDLE_PATH,
    SOCKET_PATH,
    WORK_ROOT,
    Relay,
    SandboxConfig,
    ZygoteProcess,
    agent_ca_bundle,
)
from crucible.agent.ssh_bundle import BUNDLE_PATH, STATE_PATH, SshBundle, SshSandbox, SshServer
from crucible.agent.uids import SandboxUid, UidPool
from crucible.errors import (
    IMAGE_ERROR_CODES,
    Error,
    ImageBuildError,
    ImagePullError,
    InvalidRequestError,
    NotFoundError,
    SandboxUnavailableError,
)
from crucible.protocol.common import ErrorInfo
from crucible.protocol.containers import ContainerAssignment, ContainerReport
from crucible.protocol.pods import pod_env
from crucible.protocol.transport import Transport

__all__ = ["SandboxLimits", "SandboxRuntime"]

log = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_MESSAGE_MAX_CHARS = 8000
# Above the zygote's footprint and its containers' memory: page cache and kernel slack.
_SLACK = 64 << 20


@dataclass(frozen=True)
class SandboxLimits:
    """Per-sandbox and per-container limits (from the settings table)."""

    disk_bytes: int = 1 << 30  # each of /work and /tmp (tmpfs)
    max_pids: int = 512  # processes in one sandbox (pids cgroup, else RLIMIT_NPROC)
    open_files: int = 4096  # per container
    file_bytes: int = 1 << 30  # largest file a container may write, its log included
    wall_clock_s: float = 0.0  # a container is stopped after this long (0: no limit)
    zygote_idle_s: float = 300.0  # an empty zygote is ended after this long
    # The memory cgroup's limit while a zygote imports its preloads; once it is ready, the
    # limit becomes what it then uses plus the memory of each live container.
    zygote_start_memory: int = 4 << 30
    use_cgroups: bool = True  # False: per-sandbox uids and rlimits only (no delegation)
    gpu_dev_root: str = "/dev"  # where the GPU device nodes are (tests point it elsewhere)


# Why a function that asks for network is refused where egress is not filtered
# (docs/sandbox.md, "Network egress"); the measured reason follows.
NETWORK_REFUSED = (
    "network egress is refused on this host: it gives network only to its owner's code, "
    "because its agent cannot filter a sandbox's egress (keep it away from the host and the "
    "link-local 169.254.0.0/16 addresses): {why}. Run the function without network= (data "
    "can come in through its arguments or the image), or on a host that filters egress"
)


@dataclass
class _Box:
    container_id: str
    dir: Path | None
    assignment: ContainerAssignment | None
    state: str = "starting"  # starting | running | exited
    zygote: str | None = None
    pid: int | None = None
    stop_requested: bool = False
    escalated: bool = False
    why_stopped: str = ""
    timers: list[threading.Timer] = field(default_factory=list)
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    log_tail: list[str] | None = None  # its last lines, when it crashed
    # Pulling its OCI image: reported "pulling", which the server does not meter (nor a pull
    # that fails); the container counts as started once the image is ready.
    pulling: bool = False
    error_code: str | None = None  # why its image did not pull (reason "image_failed")
    env: dict[str, str] = field(default_factory=dict)  # what it was forked with (for exec)


@dataclass
class _Zygote:
    key: str
    proc: ZygoteProcess
    relay: Relay
    image_key: str | None
    containers: set[str] = field(default_factory=set)
    oci_digest: str | None = None  # the OCI image it runs on (held in the OCI cache)
    idle_since: float = field(default_factory=time.monotonic)
    warmed: set[str] = field(default_factory=set)
    gone: bool = False
    ending: bool = False  # the reaper ended it: nothing new may start in it
    cgroup: SandboxCgroup | None = None
    baseline: int = 0  # the zygote's own memory (the start allowance until it is ready)
    reserved: dict[str, int] = field(default_factory=dict)  # container → its memory
    cpus: dict[str, float] = field(default_factory=dict)  # container → its CPU cores
    oom_kills: int = 0  # the memory cgroup's OOM kills already attributed
    uid: SandboxUid | None = None  # the sandbox's own host uid (agent as root)
    cluster: bool = False  # on a cluster's private network
    oci: FunctionImage | None = None  # the OCI image it runs on
    ssh: SshSandbox | None = None  # its SSH server (OCI images: agent/ssh_bundle.py)

    def apply_limits(self) -> None:
        if self.cgroup is not None and self.cgroup.memory_file is not None:
            self.cgroup.set_memory_limit(self.baseline + sum(self.reserved.values()) + _SLACK)
        if self.cgroup is not None and self.cgroup.cpu_file is not None:
            # The quota is the sum of the live containers' cpu=, at least one core meanwhile
            # (the zygote imports its preloads before any container exists).
            self.cgroup.set_cpu_limit(max(sum(self.cpus.values()), 1.0))


class SandboxRuntime:
    """Runs containers in bubblewrap sandboxes, forked from per-image zygotes. Thread-safe."""

    # Container pids are the sandbox's own (its PID namespace), not the host's.
    reports_host_pids = False

    def __init__(
        self,
        agent_dir: Path,
        server_url: str,
        *,
        bwrap: str,
        images: ImageCache,
        limits: SandboxLimits | None = None,
        stop_grace_s: float = 5.0,
        volume_stop_grace_s: float = 50.0,
        on_exit: Callable[[ContainerReport], None] | None = None,
        uids: UidPool | None = None,
        oci: OciImages | None = None,
        worker_deps: WorkerDeps | None = None,
        cluster_net_port: int = 0,
    ) -> None:
        self.agent_dir = Path(agent_dir)
        # Pod clusters' private networks (agent/clusternet.py), on this UDP port (0: a free
        # one); why this host cannot build them (None: it can), measured at start-up.
        self.cluster_nets = ClusterNetworks(
            cluster_net_port or free_udp_port(), owner=str(self.agent_dir.resolve())
        )
        self.cluster_net_problem: str | None = "not measured yet"
        # OCI images (Image.from_registry): pulled into <agent_dir>/oci unless given.
        self.oci = oci or OciImages(self.agent_dir / "oci")
        self.worker_deps = worker_deps or WorkerDeps(self.agent_dir / "oci" / "worker-deps")
        # The SSH server brought into OCI sandboxes (the host's dropbear and its libraries).
        self.ssh_bundle = SshBundle(self.agent_dir / "ssh-bundle")
        self.python_bundle = PythonBundle(self.agent_dir / "python-bundle", host_python_paths())
        self.uids = uids  # None: sandboxes share the agent's uid (it is not root)
        # The account that owns this host (the agent sets it once registered): only its code
        # may have the host's network (network=True). None: nobody's.
        self.owner_account: str | None = None
        # Why this host cannot give sandboxes filtered egress (None: it can), measured by the
        # isolation probe at start-up; until then nobody's code gets it.
        self.egress_problem: str | None = "not measured yet"
        self.server_url = server_url
        self.bwrap = bwrap
        self.images = images
        self.limits = limits or SandboxLimits()
        self.stop_grace_s = stop_grace_s
        # A container with volumes commits what it left as it stops (sdk/_volumes.py).
        self.volume_stop_grace_s = volume_stop_grace_s
        self.on_exit = on_exit
        self._boxes: dict[str, _Box] = {}
        self._zygotes: dict[str, _Zygote] = {}
        self._execs: dict[str, tuple[str, ZygoteExec]] = {}  # session → (zygote key, handle)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        for d in (self.containers_dir, self.code_cache_dir, self.sandboxes_dir):
            d.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                d.chmod(0o700)
        self._launcher = threading.Thread(
            target=self._launch_loop, name="crucible-sandbox-launcher", daemon=True
        )
        self._launcher.start()

    @property
    def containers_dir(self) -> Path:
        return self.agent_dir / "containers"

    @property
    def code_cache_dir(self) -> Path:
        return self.agent_dir / "code"

    @property
    def sandboxes_dir(self) -> Path:
        return self.agent_dir / "sandboxes"

    # -- the runtime contract -----------------------------------------------------------------
    def knows(self, container_id: str) -> bool:
        with self._lock:
            return container_id in self._boxes

    def start(self, assignment: ContainerAssignment) -> None:
        """Queue the container; it is reported ``starting`` until its process runs. Never
        raises: failures end it as ``start_failed`` with a message."""
        cid = assignment.container_id
        with self._lock:
            if cid in self._boxes:
                return
            if not _SAFE_ID.match(cid):
                box = _Box(cid, None, None)
                self._boxes[cid] = box
                self._finish(box, None, "start_failed", f"invalid container id {cid!r}")
                failed = True
            else:
                box = _Box(cid, self.containers_dir / cid, assignment)
                # From the first report on: the pull is never metered as a start.
                box.pulling = assignment.image is not None and assignment.image.registry is not None
                self._boxes[cid] = box
                failed = False
        if failed:
            self._notify(box)
            return
        self._queue.put(("start", assignment))

    def poll(self) -> list[ContainerReport]:
        """Every container's state; ``pulling`` for those still pulling their OCI image (the
        server keeps them pending, so the pull is not metered)."""
        with self._lock:
            return [self._report(b) for b in self._boxes.values()]

    def stop(self, container_id: str, grace_s: float | None = None, why: str = "") -> bool:
        """SIGTERM the container's process group, SIGKILL ``grace_s`` later (default: the
        runtime's grace; a preemption brings its own). A container not yet forked ends at
        once. True only for the call that started the stop."""
        with self._lock:
            box = self._boxes.get(container_id)
            if box is None or box.state == "exited" or box.stop_requested:
                return False
            box.stop_requested = True
            box.why_stopped = why
            if box.state == "starting" and box.zygote is None:  # not yet sent to a zygote
                self._finish(box, None, "stopped", "stopped by the agent before it started")
                notify = True
            else:
                notify = False
                self._signal(box, signal.SIGTERM)
                delay = self.stop_grace_s if grace_s is None else max(0.0, grace_s)
                if grace_s is None and box.assignment is not None and box.assignment.volumes:
                    delay = max(delay, self.volume_stop_grace_s)
                timer = threading.Timer(delay, self._escalate, args=(box,))
                timer.daemon = True
                box.timers.append(timer)
                timer.start()
        if notify:
            self._notify(box)
        return True

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
    ) -> ZygoteExec:
        """Start ``argv`` (or ``python -m module``) inside the container's sandbox, forked by
        its zygote: same namespaces, uid, mounts, cgroup and seccomp filter; the container's
        environment without its token, plus ``env``. A missing program exits 127 with a line
        on stderr. Raises NotFoundError when the container is not running here."""
        z, box = self._running(container_id)
        assert box.assignment is not None
        sid = "x" + os.urandom(8).hex()
        handle = ZygoteExec(sid, lambda: z.proc.send({"op": "kill-exec", "sid": sid}))
        with self._lock:
            self._execs[sid] = (z.key, handle)
        forked = box.env or self._container_env(box.assignment, z.oci)
        full_env = exec_env(forked)
        pod = box.assignment.pod
        if pod is not None:  # its sessions see what its command sees
            full_env |= pod_env(
                pod,
                forked,
                disk=forked.get("CRUCIBLE_POD_DISK", POD_DISK_PATH),
                python_dir=os.path.dirname(sys.executable),
            )
        full_env |= env
        msg = {
            "op": "exec",
            "cid": container_id,
            "sid": sid,
            "argv": argv,
            "module": module,
            "env": full_env,
            "tty": tty,
        }
        if not z.proc.send(msg, fds=list(fds)):
            with self._lock:
                self._execs.pop(sid, None)
            raise NotFoundError(f"container {container_id} is not running on this host")
        return handle

    def ssh_server(
        self, container_id: str, session_id: str, keys: list[str], login: str
    ) -> SshServer | None:
        """The SSH server for a session into a container from an OCI image (the agent's own,
        see :mod:`crucible.agent.ssh_bundle`); None for the default image, whose sessions run
        ``python -m crucible.worker.sshd``. Raises NotFoundError when the container is not
        running here, and an :class:`Error` saying what to do when it cannot serve SSH."""
        z, box = self._running(container_id)
        if z.ssh is None or z.oci is None:
            return None
        assert box.assignment is not None
        home = POD_DISK_PATH if box.assignment.pod is not None else f"{WORK_ROOT}/{container_id}"
        path = self._container_env(box.assignment, z.oci)["PATH"]
        return z.ssh.server(session_id, keys, login, home, path)

    def connect(self, container_id: str, port: int) -> socket.socket:
        """A connection to ``port`` on the loopback of the container's own network namespace
        (which exists with the network off too), made by a process the zygote forks."""
        z, _box = self._running(container_id)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sid = "c" + os.urandom(8).hex()
        handle = ZygoteExec(sid, None)
        with self._lock:
            self._execs[sid] = (z.key, handle)
        try:
            msg = {"op": "connect", "cid": container_id, "sid": sid, "port": port}
            if not z.proc.send(msg, fds=[theirs.fileno()]):
                raise NotFoundError(f"container {container_id} is not running on this host")
        finally:
            theirs.close()
        ours.settimeout(10)
        try:
            status = ours.recv(1)  # one byte: what follows may already be the port's data
            if status == b"\x00":
                ours.settimeout(None)
                return ours
            reason = ours.recv(4096).decode("utf-8", "replace") if status else ""
        except OSError:
            reason = ""
        ours.close()
        raise InvalidRequestError(reason or "the container's sandbox did not answer")

    def _running(self, container_id: str) -> tuple[_Zygote, _Box]:
        with self._lock:
            box = self._boxes.get(container_id)
            z = self._zygotes.get(box.zygote) if box is not None and box.zygote else None
            if box is None or box.state != "running" or z is None or z.gone:
                raise NotFoundError(f"container {container_id} is not running on this host")
            return z, box

    def forget(self, container_id: str) -> bool:
        with self._lock:
            box = self._boxes.get(container_id)
            if box is None or box.state != "exited":
                return False
            del self._boxes[container_id]
        if box.dir is not None:
            shutil.rmtree(box.dir, ignore_errors=True)
        return True

    def stop_all(self, timeout_s: float | None = None) -> None:
        """Stop every container, wait for their ends, then end every zygote."""
        with self._lock:
            ids = [cid for cid, b in self._boxes.items() if b.state != "exited"]
        for cid in ids:
            self.stop(cid)
        deadline = time.monotonic() + (self.stop_grace_s + 2.0 if timeout_s is None else timeout_s)
        with self._changed:
            while any(b.state != "exited" for b in self._boxes.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(min(left, 0.1))
            zygotes = list(self._zygotes.values())
        for z in zygotes:
            z.proc.terminate()
        for z in zygotes:  # their cgroups and relay directories are removed on the way out
            z.proc.done.wait(timeout=3.0)
        self.cluster_nets.close()

    # -- observability (benchmarks, tests) ----------------------------------------------------
    def zygote_pids(self) -> dict[str, int]:
        """Host pid of each live sandbox's bwrap process, by zygote key."""
        with self._lock:
            return {k: z.proc.pid for k, z in self._zygotes.items() if not z.gone}

    # -- the launcher -------------------------------------------------------------------------
    def _launch_loop(self) -> None:
        while True:
            try:
                op, item = self._queue.get(timeout=1.0)
            except queue.Empty:
                self._end_idle_zygotes()
                continue
            try:
                if op == "start":
                    self._prepare(item)
                elif op == "built":
                    assignment, built = item
                    self._launch(assignment, built)
            except Exception as exc:  # one bad container must not stop the launcher
                cid = item.container_id if op == "start" else item[0].container_id
                log.exception("could not start container %s", cid)
                self._fail(cid, f"{type(exc).__name__}: {exc}")

    def _prepare(self, a: ContainerAssignment) -> None:
        if self._cancelled(a.container_id):
            return
        if a.image is not None and a.image.registry is not None:
            with self._lock:
                box = self._boxes.get(a.container_id)
                if box is not None:
                    box.pulling = True
            threading.Thread(
                target=self._pull, args=(a,), name=f"crucible-pull-{a.container_id}", daemon=True
            ).start()
            return
        if a.image is None or not a.image.steps:
            self._launch(a, None)
            return

        def build() -> None:
            transport = Transport(self.server_url, a.token, retry_for_s=10.0)
            try:
                assert a.image is not None
                built = self.images.ensure(a.image, lambda sha: _fetch(transport, sha))
            except Exception as exc:
                log.warning("image of container %s did not build: %s", a.container_id, exc)
                code = exc.code if isinstance(exc, Error) else ImageBuildError.code
                text = str(exc) if isinstance(exc, Error) else f"{type(exc).__name__}: {exc}"
                # Queued calls would wait forever on a container that never starts: start it
                # without the image and let its worker fail them with the installer's words.
                self._queue.put(("built", (a, ErrorInfo(code=code, message=text))))
                return
            finally:
                transport.close()
            self._queue.put(("built", (a, built)))

        threading.Thread(target=build, name=f"crucible-build-{a.container_id}", daemon=True).start()

    def _pull(self, a: ContainerAssignment) -> None:
        """Pull the container's OCI image (a build thread), then queue its launch; a failure
        starts it without the image, so that its worker fails the calls with the error."""
        assert a.image is not None and a.image.registry is not None
        transport = Transport(self.server_url, a.token, retry_for_s=10.0)
        try:
            auth = None
            if a.image.registry_secret:
                values = transport.request(
                    "GET", f"/v1/containers/{a.container_id}/registry-auth"
                ).get("env", {})
                if values.get("REGISTRY_USERNAME") is not None:
                    auth = RegistryAuth(
                        str(values["REGISTRY_USERNAME"]), str(values.get("REGISTRY_PASSWORD", ""))
                    )
            ready = prepare_function_image(
                self.oci, self.worker_deps, a.image.registry, auth, pod=a.pod is not None
            )
        except Exception as exc:
            log.warning("image of container %s was not pulled: %s", a.container_id, exc)
            code = exc.code if isinstance(exc, Error) else ImagePullError.code
            text = str(exc) if isinstance(exc, Error) else f"{type(exc).__name__}: {exc}"
            with self._lock:
                box = self._boxes.get(a.container_id)
                if box is None or box.state == "exited":
                    return
                # It never ran: the server fails the function's queued calls with this error
                # and charges nothing.
                box.pulling = False
                box.error_code = code if code in IMAGE_ERROR_CODES else ImagePullError.code
                self._finish(box, None, "image_failed", text)
            self._notify(box)
            return
        finally:
            transport.close()
        with self._lock:
            box = self._boxes.get(a.container_id)
            if box is not None:
                box.pulling = False
        self._queue.put(("built", (a, ready)))

    def _launch(
        self, a: ContainerAssignment, built: BuiltImage | FunctionImage | ErrorInfo | None
    ) -> None:
        cid = a.container_id
        if self._cancelled(cid):
            return
        failure = built if isinstance(built, ErrorInfo) else None
        image = built if isinstance(built, BuiltImage | FunctionImage) else None
        egress: EgressPlan | None = None
        owner = self.owner_account is not None and a.account_id == self.owner_account
        # The owner's network=True is the host's own network (its machine, its code); every
        # other ask is filtered egress, where this host can filter it.
        if a.network and not (a.network is True and owner):
            if self.egress_problem is not None:
                self._fail(cid, NETWORK_REFUSED.format(why=self.egress_problem))
                return
            try:
                egress = plan_egress(a.network, server_url=self.server_url)
            except EgressError as exc:
                self._fail(cid, str(exc))
                return
        if a.pod is not None and a.pod.network is not None and self.cluster_net_problem:
            self._fail(
                cid,
                "this host cannot build the cluster's private network "
                f"({self.cluster_net_problem}); the cluster is placed again elsewhere",
            )
            return
        if a.pod is not None and not isinstance(image, FunctionImage):
            try:
                resolve_pod_image(a.pod.image)
            except Error as exc:
                self._fail(cid, exc.message)
                return
        try:
            z = self._zygote_for(a, image, failed=failure is not None, egress=egress)
        except Error as exc:  # e.g. this host cannot bring its Python into the image
            self._fail(cid, exc.message)
            return
        # A pod runs its own command, not a function: there is no code bundle to place.
        code = a.code.bundle if a.pod is not None else self._place_code(a, z)
        env = self._container_env(a, image if isinstance(image, FunctionImage) else None)
        if a.pod is not None and isinstance(image, FunctionImage):
            # The image's own command (if the pod names none) and environment.
            argv = image.image.entrypoint + image.image.cmd
            env["CRUCIBLE_POD_IMAGE_ARGV"] = json.dumps(argv)
            env["CRUCIBLE_POD_IMAGE_ENV"] = json.dumps(image.env)
            env["CRUCIBLE_POD_IMAGE_WORKDIR"] = image.image.workdir
        if failure is not None:
            env["CRUCIBLE_INIT_ERROR"] = failure.model_dump_json()
        box_dir = self.containers_dir / cid
        box_dir.mkdir(parents=True, exist_ok=True)
        log_fd = os.open(box_dir / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        msg = {
            "op": "fork",
            "cid": cid,
            "env": env,
            "assignment": a.model_dump_json(),
            "limits": {
                "memory_bytes": a.resources.memory_mib * 1024 * 1024,
                "file_bytes": self.limits.file_bytes,
                "open_files": self.limits.open_files,
            },
            # Import the user's module in the zygote, once this code has run here before, only
            # for its snapshot hooks: module-level code run there has no container's env or
            # secrets (a module reading its API key at import got None from the second
            # container on), so every other container imports the module itself.
            "warm": {"sha": a.code.bundle, "module": a.code.module}
            if code in z.warmed and a.pod is None and a.code.snapshot
            else None,
        }
        if isinstance(image, FunctionImage):
            msg["workdir"] = image.image.workdir
        with self._lock:
            box = self._boxes.get(cid)
            if box is None or box.state == "exited":
                os.close(log_fd)
                return
            box.zygote = z.key
            box.env = env
            z.containers.add(cid)
            z.reserved[cid] = a.resources.memory_mib * 1024 * 1024
            z.cpus[cid] = float(a.resources.cpu)
            z.apply_limits()
        try:
            sent = z.proc.send(msg, [log_fd])
        finally:
            os.close(log_fd)
        z.warmed.add(code)
        if not sent:
            self._fail(cid, "the sandbox ended before the container could start")

    def _zygote_for(
        self,
        a: ContainerAssignment,
        built: BuiltImage | FunctionImage | None,
        *,
        failed: bool = False,
        egress: EgressPlan | None = None,
    ) -> _Zygote:
        """The live zygote for the container's (account, image, network, GPUs), started if
        needed. ``failed``: the image did not build; a plain zygote of its own serves the
        containers that report it."""
        ident = "|".join(
            [
                a.account_id,
                a.image.id if a.image else "",
                json.dumps(a.network),
                egress.key() if egress is not None else "",
                repr(a.gpu_indices),
                repr(sorted(a.volumes.items())),
                a.pod.pod_id if a.pod is not None else "",
                # A cluster member's sandbox is on one network at one address: a new plan
                # (the gang placed again elsewhere) needs a new sandbox.
                a.pod.network.model_dump_json() if a.pod and a.pod.network else "",
            ]
        )
        if failed:
            ident += "|image-failed"
        key = hashlib.sha256(ident.encode()).hexdigest()[:24]
        with self._lock:
            z = self._zygotes.get(key)
            if (
                z is not None
                and not z.gone
                and not z.ending
                and not (z.cluster and not z.containers)
            ):
                return z
            if z is not None and not z.gone:
                z.ending = True
        if z is not None and not z.gone:
            # Not to be handed a container: a sandbox the reaper ended, whose end its reader
            # has not seen yet (the container would fail to start in it), or a cluster
            # member's sandbox, which serves one run and is ended once idle
            # (_end_idle_zygotes); a next run on the same plan and hosts (the cluster stopped
            # and started again) that comes before the reaper never started there. End it,
            # and start afresh once it is gone (it has this key). Starts and the reaper both
            # run on this thread.
            log.info("waiting for zygote %s to end before starting it afresh", key)
            z.proc.terminate()
            if not z.proc.done.wait(10):
                # Its directory is still in use: never remove it under a running sandbox.
                raise SandboxUnavailableError(
                    "the host's last sandbox for this container (same account, image and "
                    "network) has not ended yet"
                )
        sdir = self.sandboxes_dir / key
        shutil.rmtree(sdir, ignore_errors=True)
        (sdir / "code").mkdir(parents=True)
        root = _crucible_import_root()
        oci = built if isinstance(built, FunctionImage) else None
        uv_built = built if isinstance(built, BuiltImage) else None
        cfg = SandboxConfig(
            name=key,
            dir=sdir,
            python=str(uv_built.python) if uv_built else sys.executable,
            preload=list(a.image.preload) if a.image and not failed else [],
            image_mounts=list(uv_built.mounts) if uv_built is not None else [],
            image_root=uv_built.root if uv_built is not None else None,
            network=a.network is True and egress is None,  # the owner's: the host's network
            egress=egress,
            gpu_indices=list(a.gpu_indices),
            disk_bytes=self.limits.disk_bytes,
            env={"PYTHONPATH": root} if root and oci is None else {},
            gpu_dev_root=self.limits.gpu_dev_root,
            ca_bundle=agent_ca_bundle(),
        )
        if cfg.ca_bundle is not None:
            cfg.env["SSL_CERT_FILE"] = CA_BUNDLE_PATH
        plan = a.pod.network if a.pod is not None else None
        if plan is not None and not cfg.network:
            # A cluster member: its sandbox joins the cluster's network before it runs.
            cfg.join_network = lambda pid: self.cluster_nets.join(plan, key, pid)
        if oci is not None:
            cfg.rootfs = oci.image.rootfs
            cfg.lib_mounts = oci.lib_mounts
            cfg.uid, cfg.gid = oci.uid, oci.gid
            cfg.env.update(oci.env)
            if oci.python is not None:
                cfg.python = oci.python.path
            else:
                # A pod: the agent's own interpreter, whatever the image holds. The image's
                # PYTHON* and LD_* are not the zygote's (its command still gets them).
                runtime = self.python_bundle.ensure()
                cfg.env = {k: v for k, v in cfg.env.items() if not k.startswith(("PYTHON", "LD_"))}
                cfg.env.update(runtime.env, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
                *cfg.python_prefix, cfg.python = runtime.argv
                cfg.python_bundle_mounts = runtime.mounts
                ensure_mount_point(oci.image.rootfs, PYTHON_HOME, replace=True)
        uid = self.uids.acquire() if self.uids is not None else None
        cfg.host_uid = uid.uid if uid is not None else None
        ssh: SshSandbox | None = None
        if oci is not None and a.image is not None:
            bundle, problem = self.ssh_bundle.ensure()
            state = sdir / "ssh"
            state.mkdir(mode=0o755)
            ssh = SshSandbox(
                bundle=bundle,
                problem=problem,
                state=state,
                rootfs=oci.image.rootfs,
                ref=a.image.registry or "",
                workdir=oci.image.workdir,
                uid=oci.uid,
                gid=oci.gid,
                host_uid=cfg.host_uid,
            )
            cfg.ssh_mounts = ssh.mounts()
            for inside in (BUNDLE_PATH, STATE_PATH):  # an image cached before they existed
                ensure_mount_point(oci.image.rootfs, inside, replace=True)
        # Volumes: a directory per mount, writable by the sandbox's uid; the worker fills it
        # with the volume's latest version, and the containers of this sandbox share it.
        for i, inside in enumerate(sorted(a.volumes)):
            host_dir = sdir / "volumes" / str(i)
            host_dir.mkdir(parents=True)
            if cfg.host_uid is not None:
                os.chown(host_dir, cfg.host_uid, cfg.host_uid)
            cfg.volume_mounts.append((host_dir, inside))
            if oci is not None:  # its mount point, in the (read-only) image
                ensure_mount_point(oci.image.rootfs, inside)
        if a.pod is not None:
            # The pod's disk: kept on the host across stop/start, owned by this sandbox's uid.
            disk = pod_disk_dir(self.agent_dir, a.pod.pod_id)
            if cfg.host_uid is not None:
                _chown_tree(disk, cfg.host_uid)
            cfg.volume_mounts.append((disk, POD_DISK_PATH))
            if oci is not None:  # its mount point, in the (read-only) image
                ensure_mount_point(oci.image.rootfs, POD_DISK_PATH)
        try:
            relay = Relay(cfg.run_dir / "server.sock", self.server_url)
        except OSError:
            shutil.rmtree(cfg.run_dir, ignore_errors=True)
            if uid is not None:
                uid.release()
            raise
        cgroup = self.new_cgroup(key)
        rlimits = self.rlimits(cgroup)
        if uv_built is not None:
            self.images.acquire(uv_built.key)
        if oci is not None:
            self.oci.acquire(oci.image.digest)
        try:
            proc = ZygoteProcess(
                self.bwrap,
                cfg,
                lambda msg: self._on_zygote(key, msg),
                cgroup=cgroup,
                limits=rlimits,
            )
        except BaseException:
            self.cluster_nets.leave(key)
            relay.close()
            shutil.rmtree(cfg.run_dir, ignore_errors=True)
            if uv_built is not None:
                self.images.release(uv_built.key)
            if oci is not None:
                self.oci.release(oci.image.digest)
            if cgroup is not None:
                cgroup.remove()
            if uid is not None:
                uid.release()
            raise
        z = _Zygote(
            key,
            proc,
            relay,
            uv_built.key if uv_built is not None else None,
            oci_digest=oci.image.digest if oci is not None else None,
            cgroup=cgroup,
            baseline=self.limits.zygote_start_memory,
            uid=uid,
            cluster=cfg.join_network is not None,
            oci=oci,
            ssh=ssh,
        )
        with self._lock:
            self._zygotes[key] = z
        log.info(
            "started zygote %s (sandbox pid %d, network %s%s)",
            key,
            proc.pid,
            a.network,
            ", filtered egress" if egress is not None else "",
        )
        return z

    def new_cgroup(self, name: str) -> SandboxCgroup | None:
        """The cgroups of a new sandbox, where the host allows them and settings want them."""
        if not self.limits.use_cgroups:
            return None
        return sandbox_cgroup(name, self.limits.max_pids, self.limits.zygote_start_memory)

    def rlimits(self, cgroup: SandboxCgroup | None) -> dict[str, int]:
        """The rlimits bwrap starts under. ``RLIMIT_NPROC`` counts the processes of a uid: it
        bounds one sandbox when the sandbox has a uid of its own (always set then: it holds
        without cgroups), and otherwise only stands in where no pids cgroup exists."""
        rlimits = {"RLIMIT_CORE": 0, "RLIMIT_FSIZE": self.limits.file_bytes}
        if self.uids is not None or cgroup is None or not cgroup.pids:
            rlimits["RLIMIT_NPROC"] = self.limits.max_pids
        return rlimits

    def _place_code(self, a: ContainerAssignment, z: _Zygote) -> str:
        """Fetch the bundle into the host's code cache (with the container's own token), then
        link it into the sandbox's read-only code directory."""
        sha = a.code.bundle
        target = z.proc.cfg.code_dir / sha
        if target.exists():
            return sha
        from crucible.worker.main import Worker

        transport = Transport(self.server_url, a.token, retry_for_s=10.0)
        try:
            src = Worker(a, transport, self.code_cache_dir)._bundle_dir()
        finally:
            transport.close()
        tmp = z.proc.cfg.code_dir / f".{sha}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            shutil.copytree(src, tmp, copy_function=os.link)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
        os.rename(tmp, target)
        return sha

    def _container_env(
        self, a: ContainerAssignment, oci: FunctionImage | None = None
    ) -> dict[str, str]:
        """The container's environment, built from scratch (never the agent's own): an OCI
        image's ENV (its PATH too), the image spec's env, then Crucible's."""
        devices = ",".join(str(i) for i in a.gpu_indices)
        env = dict(oci.env) if oci is not None else {}
        env.update(a.image.env if a.image else {})
        env.update(
            {
                "PATH": env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
                if oci is not None
                else "/usr/local/bin:/usr/bin:/bin",
                "LANG": "C.UTF-8",
                "PYTHONUNBUFFERED": "1",
                "CRUCIBLE_SERVER_URL": self.server_url,
                "CRUCIBLE_SERVER_SOCKET": SOCKET_PATH,
                "CRUCIBLE_CONTAINER_ID": a.container_id,
                "CRUCIBLE_CONTAINER_TOKEN": a.token,
                "CRUCIBLE_CODE_CACHE": "/crucible/code",
                # Only the assigned GPUs' device nodes exist in the sandbox; CUDA is told the
                # same (empty: no GPU at all), in NVML's PCI order.
                "CUDA_VISIBLE_DEVICES": devices,
                "NVIDIA_VISIBLE_DEVICES": devices,
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            }
        )
        root = _crucible_import_root()
        if root and oci is None:
            # Crucible from a source tree (a checkout on PYTHONPATH): the zygote has it, and
            # so must what the container starts itself (`python -m crucible...`: ssh
            # sessions, a fine-tune's trainer).
            env["PYTHONPATH"] = root
        if a.volumes:  # bound into this container's sandbox (see _zygote_for)
            env["CRUCIBLE_VOLUMES_BOUND"] = ",".join(sorted(a.volumes))
        if agent_ca_bundle() is not None:  # copied into its sandbox (see _zygote_for)
            env["SSL_CERT_FILE"] = CA_BUNDLE_PATH
        if a.pod is not None:  # the pod's disk: its command's (and its sessions') home
            env["CRUCIBLE_POD_DISK"] = POD_DISK_PATH
        return env

    # -- zygote events (reader threads) -------------------------------------------------------
    def _on_zygote(self, key: str, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        ended: list[_Box] = []
        with self._lock:
            z = self._zygotes.get(key)
            if op == "ready":
                if z is not None and z.cgroup is not None:
                    z.baseline = max(z.cgroup.memory_usage(), 16 << 20)
                    z.apply_limits()
                log.info(
                    "zygote %s ready in %.2f s (preloaded %s%s)",
                    key,
                    msg.get("import_s", 0.0),
                    ", ".join(msg.get("preloaded", [])) or "nothing",
                    f"; failed: {msg['failed']}" if msg.get("failed") else "",
                )
            elif op == "started":
                box = self._boxes.get(str(msg.get("cid")))
                if box is not None and box.state == "starting":
                    box.state = "running"
                    box.pid = int(msg["pid"])
                    if self.limits.wall_clock_s > 0:
                        t = threading.Timer(
                            self.limits.wall_clock_s,
                            self.stop,
                            args=(box.container_id, "wall-clock limit"),
                        )
                        t.daemon = True
                        box.timers.append(t)
                        t.start()
                    if box.stop_requested:
                        self._signal(box, signal.SIGTERM)
            elif op == "exited":
                box = self._boxes.get(str(msg.get("cid")))
                held = 0  # its memory, part of the sandbox's limit when it ended
                if z is not None:
                    z.containers.discard(str(msg.get("cid")))
                    z.cpus.pop(str(msg.get("cid")), None)
                    held = z.reserved.pop(str(msg.get("cid")), 0)
                    if held:
                        z.apply_limits()
                    if not z.containers:
                        z.idle_since = time.monotonic()
                if box is not None and box.state != "exited":
                    if msg.get("error"):  # the zygote could not fork it
                        self._finish(box, None, "start_failed", str(msg["error"]))
                    else:
                        self._record_exit(box, int(msg.get("status", 1)), z, held)
                    ended.append(box)
            elif op == "exec-exited":
                entry = self._execs.pop(str(msg.get("sid")), None)
                if entry is not None:
                    entry[1].finish(int(msg.get("status", 1)), msg.get("error"))
            elif op == "gone":
                for sid, (zkey, handle) in list(self._execs.items()):
                    if zkey == key:
                        del self._execs[sid]
                        handle.finish(-signal.SIGKILL, "the container's sandbox ended")
                if z is not None:
                    z.gone = True
                    self._zygotes.pop(key, None)
                    z.relay.close()
                    self.cluster_nets.leave(key)
                    if z.uid is not None:
                        z.uid.release()
                    if z.image_key is not None:
                        self.images.release(z.image_key)
                    if z.oci_digest is not None:
                        self.oci.release(z.oci_digest)
                    for cid in sorted(z.containers):
                        box = self._boxes.get(cid)
                        if box is not None and box.state != "exited":
                            reason = "stopped" if box.stop_requested else "killed"
                            self._finish(
                                box,
                                None,
                                reason,
                                f"the container's sandbox ended (status {msg.get('status')})"
                                + (self._tail_suffix(box) or _sandbox_log(msg)),
                            )
                            ended.append(box)
                shutil.rmtree(self.sandboxes_dir / key, ignore_errors=True)
        for box in ended:
            self._notify(box)

    def _record_exit(self, box: _Box, rc: int, z: _Zygote | None, held: int = 0) -> None:
        """``held``: the memory the container held, no longer in ``z.reserved``."""
        oom = z.cgroup.oom_kills() if z is not None and z.cgroup is not None else 0
        if z is not None and oom > z.oom_kills:
            z.oom_kills = oom
            if rc == -signal.SIGKILL and not box.stop_requested:
                # The limit when the kernel killed it: its own memory was still counted.
                limit = (z.baseline + sum(z.reserved.values()) + held + _SLACK) >> 20
                self._finish(
                    box,
                    rc,
                    "oom",
                    f"out of memory: killed by the kernel at its sandbox's memory limit "
                    f"({limit} MiB with the other containers of this account and image; files "
                    "in /tmp and the work dir count as memory)" + self._tail_suffix(box),
                )
                return
        if box.stop_requested:
            how = "after SIGKILL (it ignored SIGTERM)" if box.escalated else "after SIGTERM"
            why = f" ({box.why_stopped})" if box.why_stopped else ""
            self._finish(box, rc, "stopped", f"stopped by the agent{why}; ended {how}")
        elif rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            self._finish(
                box,
                rc,
                "killed",
                f"killed by {name}, a signal the agent did not send" + self._tail_suffix(box),
            )
        else:
            message = None
            if rc != 0:
                message = f"worker exited with status {rc}" + self._tail_suffix(box)
            self._finish(box, rc, "exited", message)

    # -- helpers (callers hold the lock unless stated) ----------------------------------------
    def _cancelled(self, cid: str) -> bool:
        with self._lock:
            box = self._boxes.get(cid)
            return box is None or box.state == "exited"

    def _fail(self, cid: str, message: str) -> None:
        """End a container that never ran (called without the lock)."""
        with self._lock:
            box = self._boxes.get(cid)
            if box is None or box.state == "exited":
                return
            if box.zygote is not None:
                z = self._zygotes.get(box.zygote)
                if z is not None:
                    z.containers.discard(cid)
                    z.cpus.pop(cid, None)
                    if z.reserved.pop(cid, None) is not None:
                        z.apply_limits()
            self._finish(box, None, "start_failed", message)
        self._notify(box)

    def _signal(self, box: _Box, sig: signal.Signals) -> None:
        z = self._zygotes.get(box.zygote or "")
        if z is not None:
            z.proc.send({"op": "signal", "cid": box.container_id, "sig": int(sig)})

    def _escalate(self, box: _Box) -> None:
        with self._lock:
            if box.state == "exited":
                return
            box.escalated = True
            self._signal(box, signal.SIGKILL)

    def _end_idle_zygotes(self) -> None:
        now = time.monotonic()
        with self._lock:
            idle = [
                z
                for z in self._zygotes.values()
                if not z.containers
                and not z.ending
                # A cluster member's sandbox is not kept warm: it holds its network.
                and (z.cluster or now - z.idle_since > self.limits.zygote_idle_s)
            ]
            for z in idle:
                z.ending = True
        for z in idle:
            # In a thread of its own: its end may take seconds (SIGKILL after a grace), and
            # starts wait on this thread; a start for an ending zygote waits for its end.
            log.info("ending idle zygote %s", z.key)
            threading.Thread(target=z.proc.terminate, name=f"end-{z.key[:12]}", daemon=True).start()

    def _finish(self, box: _Box, rc: int | None, reason: str, message: str | None) -> None:
        box.state = "exited"
        box.pulling = False
        box.exit_code = rc
        box.reason = reason
        box.message = message[-_MESSAGE_MAX_CHARS:] if message else message
        for t in box.timers:
            t.cancel()
        self._changed.notify_all()

    def _tail_suffix(self, box: _Box) -> str:
        """The container's last lines as its crash message's end; kept for its exit report."""
        box.log_tail = read_log_tail(box.dir) or None
        tail = "\n".join(box.log_tail or ())
        return f"; last lines of its log:\n{tail}" if tail else ""

    @staticmethod
    def _report(b: _Box) -> ContainerReport:
        if b.state == "exited":
            return ContainerReport(
                container_id=b.container_id,
                state="exited",
                pid=b.pid,
                exit_code=b.exit_code,
                reason=b.reason,
                message=b.message,
                error_code=b.error_code,
                log_tail=b.log_tail,
            )
        state = "pulling" if b.pulling and b.state == "starting" else b.state
        return ContainerReport(container_id=b.container_id, state=state, pid=b.pid)

    def _notify(self, box: _Box) -> None:
        if self.on_exit is None:
            return
        with self._lock:
            report = self._report(box)
        try:
            self.on_exit(report)
        except Exception:
            log.exception("on_exit callback failed for container %s", box.container_id)


def _chown_tree(root: Path, uid: int) -> None:
    """Give a pod's disk to the uid of the sandbox that now runs it (the uid pool may hand a
    restarted pod another uid)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            with contextlib.suppress(OSError):
                os.lchown(os.path.join(dirpath, name), uid, uid)
    os.chown(root, uid, uid)


def _fetch(transport: Transport, sha: str) -> bytes:
    status, data = transport.request_raw("GET", f"/v1/blobs/{sha}")
    if status != 200:
        Transport._decode(status, data)
    return data


def _sandbox_log(msg: dict[str, Any]) -> str:
    tail = str(msg.get("log") or "").strip()
    return f"; the sandbox's log ends with:\n{tail}" if tail else ""
