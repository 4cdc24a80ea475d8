"""The host agent: registers this machine with the control plane and runs its containers.

The agent only dials out (hosts may sit behind NAT). Its whole protocol is two requests:

- ``POST /v1/hosts/register`` (:class:`HostRegister` → :class:`HostInfo`) once at start, and
  again whenever the server says it does not know the host (it lost its state);
- ``POST /v1/hosts/{host_id}/sync`` (:class:`HostSync` → :class:`HostSyncReply`) in a loop:
  a long poll that carries every container's state up and brings assignments to start and
  container ids to stop down.

Two threads sync. The loop thread long-polls with ``wait_s`` = the heartbeat interval; a second
thread sends an extra sync with ``wait_s=0`` the moment a container exits, so the server hears
of an exit (and can requeue its calls) without waiting for the next heartbeat. An exited
container is reported until a sync carrying that report was answered with 200; then it is
forgotten (its record and directory removed).

A control plane that is restarting is normal: the agent retries with backoff and keeps its
containers running meanwhile. Only a refused token or a refused registration stops it.
"""

from __future__ import annotations

import collections
import logging
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from crucible.agent.access import AccessDialer
from crucible.agent.address import own_address
from crucible.agent.dir_lock import AgentDirLock
from crucible.agent.energy import EnergyMeter, open_nvml
from crucible.agent.inventory import detect_inventory
from crucible.agent.runtimes import build_runtime, measure_isolation
from crucible.agent.selftest import run_self_test
from crucible.errors import (
    AuthError,
    Error,
    HostSupersededError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ServerUnavailableError,
)
from crucible.protocol.accounts import AccountInfo
from crucible.protocol.common import read_tolerant
from crucible.protocol.containers import ContainerReport
from crucible.protocol.hosts import (
    HostInfo,
    HostRegister,
    HostSync,
    HostSyncReply,
    Inventory,
    IsolationReport,
    PodDisks,
    PodDisksReply,
    SelfTestResult,
)
from crucible.protocol.transport import Transport
from crucible.settings import Settings

__all__ = ["Agent", "agent_version"]

log = logging.getLogger("crucible.agent")

# Errors after which retrying cannot help: the operator must fix the token or the request.
_FATAL = (AuthError, PermissionDeniedError, InvalidRequestError)
_BACKOFF_START_S = 0.25
_BACKOFF_MAX_S = 10.0
# A server that answers an empty sync early (before wait_s) must not make the agent spin.
_MIN_EMPTY_SYNC_PERIOD_S = 0.25
# Ids of forgotten containers remembered so a re-sent assignment does not run one again.
_TOMBSTONES = 4096


def agent_version() -> str:
    """The installed crucible version, or ``"0+unknown"`` when running from a bare checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crucible")
    except PackageNotFoundError:
        return "0+unknown"


class Agent:
    """One host's agent. Construct it, then call :meth:`run` (blocking).

    ``name`` defaults to the machine's hostname; the server gives back the same host id when
    the same account registers the same name again, so restarting an agent keeps its identity.
    ``fake_gpus`` (e.g. ``"4xH100-80GB"``) declares GPUs for testing; it needs
    ``settings.allow_fake_gpus``. ``worker_argv`` replaces the worker command (tests).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        server_url: str,
        token: str,
        name: str | None = None,
        region: str = "local",
        energy_source: str | None = None,
        carbon_g_per_kwh: int | None = None,
        fake_gpus: str | None = None,
        worker_argv: list[str] | None = None,
    ) -> None:
        self.settings = settings
        self.server_url = server_url
        self.name = name or socket.gethostname()
        self.region = region
        self.energy_source = energy_source
        self.carbon_g_per_kwh = carbon_g_per_kwh
        self.fake_gpus = fake_gpus
        self.agent_dir: Path = settings.agent_path
        # Before anything touches the directory: a second agent on it is refused, not let
        # loose on the first one's sandboxes and pod disks.
        self._dir_lock = AgentDirLock(self.agent_dir)
        self._transport = Transport(
            server_url,
            token,
            # Short: the agent's own loop retries with backoff and stays responsive to shutdown.
            retry_for_s=2.0,
            user_agent=f"crucible-agent/{agent_version()}",
        )
        self.runtime = build_runtime(
            settings, self.agent_dir, server_url, worker_argv=worker_argv, on_exit=self._on_exit
        )
        # Exec, tunnels and SSH into this host's containers, dialled back on request.
        self.access = AccessDialer(
            server_url,
            token,
            self.runtime,
            lambda: self.host_id,
            user_agent=f"crucible-agent/{agent_version()}",
        )
        self._interval = min(max(settings.heartbeat_interval_s, 0.0), 60.0)
        # The first pass over pod disks comes one period after start (pods/ may be shared by
        # a previous agent process whose containers are still being reported).
        self._next_prune = time.monotonic() + settings.pod_disk_prune_s
        self._lock = threading.Lock()  # guards _host_id, _tombstones, _stopping
        self._apply_lock = threading.Lock()  # one reply applied at a time
        # Taken around "snapshot the reports + number the sync", so sequence numbers follow the
        # order in which reports were observed, whichever thread then sends first.
        self._report_lock = threading.Lock()
        self._seq = 0  # HostSync.seq of the last sync numbered since the last registration
        self._host_id: str | None = None
        # The registration this process holds (HostInfo.agent_session; 0: an older server).
        self._agent_session = 0
        # Another agent registered under this host's name: it runs the host now.
        self._superseded = False
        self.energy: EnergyMeter | None = None  # set at the first registration
        self.isolation: IsolationReport | None = None  # measured once, at the start of run()
        self._tombstones: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._stopping = False
        self._stop = threading.Event()
        self._exited = threading.Event()
        # Separate from _stop: the exit reporter must outlive stop_all(), because children it
        # started die (PR_SET_PDEATHSIG) the moment it returns.
        self._reporter_done = threading.Event()
        # The self-test's results: measured once before the first registration (sent with
        # every registration), then every self_test_interval_s (sent once with a sync).
        self._self_test: list[SelfTestResult] | None = None
        self._fresh_self_test: list[SelfTestResult] | None = None

    # -- public API ---------------------------------------------------------------------------
    @property
    def host_id(self) -> str | None:
        """The id the server gave this host, once registered."""
        with self._lock:
            return self._host_id

    def shutdown(self) -> None:
        """Ask :meth:`run` to return: it stops the containers and reports their ends first.

        Safe from any thread and from a signal handler.
        """
        self._stop.set()

    def run(self) -> None:
        """Register, then sync until :meth:`shutdown` or SIGTERM/SIGINT (main thread only).

        On the way out every container is stopped (SIGTERM, grace, SIGKILL) and a last sync
        reports their ends. Raises :class:`crucible.errors.Error` when the inventory is refused
        (e.g. fake GPUs not allowed), the token is refused, or the server rejects the
        registration; a server that cannot be reached is retried forever.
        """
        restore = self._install_signal_handlers()
        exit_reporter = threading.Thread(
            target=self._exit_report_loop, name="crucible-agent-exits", daemon=True
        )
        try:
            # Fail fast on a misconfigured inventory before contacting anyone.
            inventory = self._inventory()
            self.isolation = self._measure_isolation(inventory)
            self._register(inventory)
            if self._stop.is_set():
                return
            exit_reporter.start()
            if self.settings.self_test_interval_s > 0:
                threading.Thread(
                    target=self._self_test_loop, name="crucible-agent-selftest", daemon=True
                ).start()
            self._sync_loop()
        finally:
            self._shutdown_containers()
            self._reporter_done.set()
            self._exited.set()
            if exit_reporter.is_alive():
                exit_reporter.join(timeout=5.0)
            self._final_report()
            restore()
            self._transport.close()
            self._dir_lock.close()

    # -- registration -------------------------------------------------------------------------
    def _inventory(self) -> Inventory:
        return detect_inventory(
            fake_gpus=self.fake_gpus,
            allow_fake=self.settings.allow_fake_gpus,
            disk_path=self.agent_dir,
            host_name=self.name,
        )

    def _measure_isolation(self, inventory: Inventory) -> IsolationReport:
        report = measure_isolation(self.runtime, gpu_indices=[g.index for g in inventory.gpus])
        if report.full():
            log.info("isolation (%s): full; strangers' code may run here", report.runtime)
        else:
            log.warning(
                "isolation (%s): not full, so the server places only this host owner's code "
                "here:\n  - %s",
                report.runtime,
                "\n  - ".join(report.problems) or "no detail",
            )
        return report

    def _register(self, inventory: Inventory | None = None) -> None:
        """Register (again), retrying transient failures until it works or shutdown.

        ``inventory`` defaults to a fresh detection (free disk changes over time).
        """
        backoff = _BACKOFF_START_S
        if self._self_test is None:
            self._self_test = run_self_test(inventory or self._inventory())
        while not self._stop.is_set():
            body = HostRegister(
                name=self.name,
                region=self.region,
                energy_source=self.energy_source,
                carbon_g_per_kwh=self.carbon_g_per_kwh,
                inventory=inventory or self._inventory(),
                agent_version=agent_version(),
                isolation=self.isolation,
                self_test=self._self_test,
                address=own_address(self.server_url),
                resumes_session=self._agent_session or None,
            )
            try:
                data = self._transport.post("/v1/hosts/register", body.model_dump(mode="json"))
                info = read_tolerant(HostInfo, data)  # a newer server's fields are dropped
            except _FATAL:
                raise
            except NotFoundError as exc:
                raise Error(
                    f"{self.server_url} has no host registration endpoint ({exc}); is --server "
                    "the URL of a Crucible control plane?"
                ) from exc
            except (Error, ValidationError) as exc:
                log.warning("registration failed (%s); retrying in %.1f s", _brief(exc), backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            with self._report_lock, self._lock:
                if self.energy is None:
                    self.energy = self._energy_meter(info.inventory)
                self._host_id = info.id
                self._agent_session = info.agent_session
                self._seq = 0  # the server numbers a registered agent's syncs from 1 again
            self._learn_owner()
            inv = info.inventory
            gpus = ", ".join(f"{g.model}{' (fake)' if g.fake else ''}" for g in inv.gpus) or "none"
            log.info(
                "registered as host %s (%s, region %s): %g CPU cores, %d MiB memory, GPUs: %s",
                info.id,
                info.name,
                info.region,
                inv.cpu_cores,
                inv.memory_mib,
                gpus,
            )
            if not info.isolated and info.isolation is not None and info.isolation.full():
                log.info(
                    "this host isolates fully but runs its own account's work only: the account "
                    "is not a provider the exchange's operator approved (`crucible account "
                    "provider NAME`, docs/operators.md)"
                )
            return

    def _energy_meter(self, inventory: Inventory) -> EnergyMeter:
        """Per-container energy: NVML on real GPUs; declared fake GPUs are estimated."""
        fake = any(g.fake for g in inventory.gpus) or not inventory.gpus
        return EnergyMeter(
            gpu_models={g.index: g.model for g in inventory.gpus},
            nvml=None if fake else open_nvml(),
        )

    def _learn_owner(self) -> None:
        """Tell the runtime which account owns this host (its token's): only that account's
        code may have the host's network. Best effort: unknown, nobody's code gets it."""
        if not hasattr(self.runtime, "owner_account"):
            return
        try:
            me = AccountInfo.model_validate(self._transport.get("/v1/accounts/me"))
        except (Error, ValidationError) as exc:
            log.warning("could not learn this host's owner (%s): network=True refused", _brief(exc))
            return
        self.runtime.owner_account = me.id

    # -- syncing ------------------------------------------------------------------------------
    def _sync_loop(self) -> None:
        backoff = _BACKOFF_START_S
        while not self._stop.is_set():
            wait_s = self._interval
            started = time.monotonic()
            try:
                reply = self._sync(wait_s, retry=True)
            except HostSupersededError as exc:
                self._superseded = True
                raise Error(
                    f"another agent registered as host {self.name!r} on {self.server_url} after "
                    "this one: it runs this host's containers now, so this agent stops its own "
                    "and exits. Give each agent its own --name (or stop the other one)"
                ) from exc
            except NotFoundError:
                log.warning(
                    "the server does not know host %s (it lost its state?); registering again",
                    self.host_id,
                )
                self._register()
                continue
            except _FATAL:
                raise
            except ServerUnavailableError as exc:
                log.warning(
                    "control plane unreachable (%s); retrying in %.1f s, containers keep running",
                    _brief(exc),
                    backoff,
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            except (Error, ValidationError) as exc:
                log.error("sync failed (%s); retrying in %.1f s", _brief(exc), backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            backoff = _BACKOFF_START_S
            self._interval = min(max(reply.heartbeat_interval_s, 0.0), 60.0)
            self._maybe_prune_pod_disks()
            if not reply.start and not reply.stop and not reply.access:
                elapsed = time.monotonic() - started
                floor = min(wait_s, _MIN_EMPTY_SYNC_PERIOD_S)
                if elapsed < floor:
                    self._stop.wait(floor - elapsed)

    def _maybe_prune_pod_disks(self) -> None:
        """Every ``pod_disk_prune_s``, ask the server which pod disks on this host nobody will
        use again, and remove them. Never fatal: a failed pass is tried at the next period."""
        period = self.settings.pod_disk_prune_s
        now = time.monotonic()
        if period <= 0 or now < self._next_prune:
            return
        self._next_prune = now + period
        root = self.agent_dir / "pods"
        try:
            held = sorted(p.name for p in root.iterdir() if p.is_dir())[:10_000]
        except FileNotFoundError:
            return
        if not held:
            return
        try:
            data = self._transport.post(
                f"/v1/hosts/{self.host_id}/pod-disks", PodDisks(pod_ids=held).model_dump()
            )
            prune = PodDisksReply.model_validate(data).prune
        except (Error, ValidationError) as exc:
            log.warning("could not ask which pod disks to remove (%s)", _brief(exc))
            return
        for pod_id in set(prune) & set(held):  # only names read from our own directory
            shutil.rmtree(root / pod_id, ignore_errors=True)
            log.info("removed the disk of pod %s (deleted, or moved to another host)", pod_id)

    def _sync(self, wait_s: float, *, retry: bool, leaving: bool = False) -> HostSyncReply:
        """One sync: report, apply the reply, forget exits the server has now heard of.

        Raises what the transport raises; nothing is forgotten unless the server answered 200.
        Each sync carries ``seq``: the loop thread and the exit reporter may race, and the server
        must not let an older snapshot (container running) override a newer one (it exited).
        """
        with self._report_lock:
            host_id = self.host_id
            if host_id is None:
                raise NotFoundError("not registered yet")
            reports = self.runtime.poll()
            dropped = None
            if self.energy is not None:
                reports = self.energy.annotate(
                    reports, host_pids=getattr(self.runtime, "reports_host_pids", True)
                )
                dropped = self.energy.dropped
            self._seq += 1
            seq = self._seq
            session = self._agent_session or None
            fresh_test, self._fresh_self_test = self._fresh_self_test, None
        body = HostSync(
            containers=reports,
            wait_s=wait_s,
            seq=seq,
            self_test=fresh_test,
            energy_readings_dropped=dropped,
            agent_session=session,
            leaving=leaving,
        ).model_dump(mode="json")
        try:
            data = self._transport.post(
                f"/v1/hosts/{host_id}/sync", body, timeout_s=wait_s + 30.0, retry=retry
            )
        except BaseException:
            if fresh_test is not None:
                with self._report_lock:  # send them with the next sync instead
                    self._fresh_self_test = self._fresh_self_test or fresh_test
            raise
        reply = read_tolerant(HostSyncReply, data)  # as from a newer server
        for report in reports:
            if report.state == "exited" and self.runtime.forget(report.container_id):
                if self.energy is not None:
                    self.energy.forget(report.container_id)
                with self._lock:
                    self._tombstones[report.container_id] = None
                    while len(self._tombstones) > _TOMBSTONES:
                        self._tombstones.popitem(last=False)
        self._apply(reply)
        return reply

    def _self_test_loop(self) -> None:
        """Rerun the self-test every self_test_interval_s; the next sync sends the results."""
        while not self._stop.wait(self.settings.self_test_interval_s):
            try:
                results = run_self_test(self._inventory())
            except Exception as exc:  # never takes the agent down
                log.warning("self-test failed: %s", _brief(exc))
                continue
            self._self_test = results  # a re-registration sends the newest
            with self._report_lock:
                self._fresh_self_test = results

    def _apply(self, reply: HostSyncReply) -> None:
        """Start new assignments and stop what the server asks to stop. Idempotent: the server
        may send an assignment again until it sees the container in a report."""
        with self._apply_lock:
            for assignment in reply.start:
                cid = assignment.container_id
                with self._lock:
                    skip = self._stopping or cid in self._tombstones
                if skip or self.runtime.knows(cid):
                    continue
                gpus = ",".join(map(str, assignment.gpu_indices)) or "none"
                log.info(
                    "starting container %s (function %s, %g CPU, %d MiB, GPUs %s)",
                    cid,
                    assignment.function_id,
                    assignment.resources.cpu,
                    assignment.resources.memory_mib,
                    gpus,
                )
                # A sandbox reports its containers' pids inside its own PID namespace, which
                # the host's /proc does not know: their CPU energy is left to the server's
                # estimate, and only GPU containers are metered here (through NVML).
                host_pids = getattr(self.runtime, "reports_host_pids", True)
                if self.energy is not None and (host_pids or assignment.gpu_indices):
                    self.energy.track(
                        cid,
                        assignment.gpu_indices,
                        assignment.resources.cpu if host_pids else 0.0,
                    )
                self.runtime.start(assignment)
            self.access.handle(reply.access)
            for cid in reply.stop:
                grace = reply.grace_s.get(cid)
                if self.runtime.stop(cid, grace_s=grace):
                    log.info(
                        "stopping container %s%s",
                        cid,
                        f" (SIGKILL in {grace:g} s)" if grace is not None else "",
                    )

    def _on_exit(self, report: ContainerReport) -> None:
        # Called by the runtime once per container, from whichever thread noticed the exit.
        detail = f"status {report.exit_code}" if report.exit_code is not None else "no status"
        first_line = (report.message or "").splitlines()[0] if report.message else ""
        log.info(
            "container %s %s (%s)%s",
            report.container_id,
            report.reason,
            detail,
            f": {first_line}" if first_line else "",
        )
        self.access.container_ended(report.container_id)
        self._exited.set()

    def _exit_report_loop(self) -> None:
        """Thread: report exits at once with a ``wait_s=0`` sync.

        It has its own keep-alive connection (the transport keeps one per thread), so it never
        waits behind the loop thread's long poll. Failures are left to the loop thread, whose
        next sync carries the same reports.
        """
        try:
            while True:
                self._exited.wait()
                if self._reporter_done.is_set():
                    return
                self._exited.clear()
                try:
                    self._sync(0.0, retry=False)
                except (Error, ValidationError) as exc:
                    log.debug("immediate exit report failed (%s); the next sync carries it", exc)
        finally:
            self._transport.close()  # this thread's connection

    # -- shutdown -----------------------------------------------------------------------------
    def _shutdown_containers(self) -> None:
        with self._lock:
            self._stopping = True  # replies that still arrive start nothing
        self._stop.set()
        self.access.close_all()
        running = [r for r in self.runtime.poll() if r.state != "exited"]
        if running:
            log.info("shutting down: stopping %d container(s)", len(running))
        self.runtime.stop_all()

    def _final_report(self) -> None:
        if self.host_id is None or self._superseded:  # the host is another agent's now
            return
        try:
            # Best effort: tell the server now rather than let it time the host out (it
            # would place work here until then).
            self._sync(0.0, retry=False, leaving=True)
        except ServerUnavailableError:
            # Normal when the control plane shuts down first (`crucible up`); it times the
            # host out and requeues what ran here.
            log.info("control plane gone; final container states not reported")
        except (Error, ValidationError) as exc:
            log.warning("could not report the final container states (%s)", _brief(exc))

    def _install_signal_handlers(self) -> Callable[[], None]:
        """SIGTERM/SIGINT → :meth:`shutdown`; returns a function that restores the old ones.

        Python only allows handlers in the main thread; elsewhere (an embedded agent run in a
        thread) this is a no-op and the owner calls :meth:`shutdown`.
        """
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("received %s; shutting down", signal.Signals(signum).name)
            self.shutdown()

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore


def _brief(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]
