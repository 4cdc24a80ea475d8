"""Measuring what this host's sandboxes really enforce, for :class:`IsolationReport`.

At start-up the agent builds one sandbox exactly as it builds a container's (same bwrap
command line, host uid, cgroups and rlimits), runs :mod:`crucible.agent.isolation_probe` in it
and compares what the probe saw with what was meant: nothing is assumed from configuration. A
protection that did not hold is reported off, with a line in ``problems`` saying what the host
operator can do about it. The server places strangers' code only on hosts whose report is
:meth:`IsolationReport.full`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.parse
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from crucible.agent import clusternet
from crucible.agent.egress import EgressRule, egress_tools_problem, host_addresses, plan_egress
from crucible.agent.runtime import _crucible_import_root
from crucible.agent.sandbox import (
    SANDBOX_UID,
    SandboxConfig,
    gpu_nodes,
    remove_stage,
    seccomp_program_fd,
    spawn_sandbox,
)
from crucible.protocol.hosts import IsolationReport

if TYPE_CHECKING:
    from crucible.agent.sandbox_runtime import SandboxRuntime

__all__ = ["judge", "judge_egress", "measure_egress", "measure_sandbox", "process_report"]

log = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 30.0
_HOST_NAMESPACES = ("user", "pid", "mnt", "ipc", "uts")

PROCESS_PROBLEM = (
    "runtime process: containers run as the agent's own user with no sandbox, so this host "
    "runs its owner's code only; install bubblewrap (apt-get install bubblewrap) and start the "
    "agent with --runtime bwrap (or leave CRUCIBLE_RUNTIME at auto)"
)


def process_report() -> IsolationReport:
    """The report of a host on the ``process`` runtime: nothing is isolated."""
    return IsolationReport(runtime="process", problems=[PROCESS_PROBLEM])


def _server_ports(server_url: str) -> list[int]:
    parsed = urllib.parse.urlsplit(server_url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return [port]


def _uids_of_tree(root: int) -> set[int]:
    """Real uids of ``root`` and all its descendants, read from the host's /proc."""
    parents: dict[int, int] = {}
    uids: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith("PPid:"):
                        parents[int(name)] = int(line.split()[1])
                    elif line.startswith("Uid:"):
                        uids[int(name)] = int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return {uids[p] for p in tree if p in uids}


def _run_probe(
    runtime: SandboxRuntime,
    cfg: SandboxConfig,
    ports: list[int],
    targets: list[tuple[str, int]] | None = None,
) -> dict[str, Any]:
    cgroup = runtime.new_cgroup(cfg.name)
    filter_fd = seccomp_program_fd()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    args = json.dumps({"ports": ports, "fd": theirs.fileno(), "targets": targets or []})
    command = [cfg.python, "-P", "-m", "crucible.agent.isolation_probe", args]
    try:
        with tempfile.TemporaryFile() as out:
            try:
                proc, link = spawn_sandbox(
                    runtime.bwrap,
                    cfg,
                    theirs.fileno(),
                    filter_fd,
                    cgroup=cgroup,
                    limits=runtime.rlimits(cgroup),
                    stdout=out,
                    command=command,
                )
            finally:
                theirs.close()
            ours.settimeout(_PROBE_TIMEOUT_S)
            data = b""
            try:
                while not data.endswith(b"\n"):
                    chunk = ours.recv(1 << 16)
                    if not chunk:
                        break
                    data += chunk
                host_uids = _uids_of_tree(proc.pid)  # while the sandbox still lives
            finally:
                ours.close()
                try:
                    proc.wait(timeout=_PROBE_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if link is not None:
                    link.close()
            out.seek(0)
            text = out.read().decode("utf-8", "replace")
    finally:
        os.close(filter_fd)
        if cgroup is not None:
            cgroup.remove()
    if not data.strip():
        raise RuntimeError(f"the probe sandbox failed (status {proc.returncode}): {text[-600:]}")
    seen: dict[str, Any] = json.loads(data)
    seen["_host_uids"] = sorted(host_uids)
    seen["_cgroup"] = {
        "pids": bool(cgroup and cgroup.pids),
        "memory": bool(cgroup and cgroup.memory_file),
        "cpu": bool(cgroup and cgroup.cpu_file),
    }
    return seen


def measure_sandbox(
    runtime: SandboxRuntime, *, gpu_indices: list[int] | None = None
) -> IsolationReport:
    """Build a probe sandbox the way containers' are built and report what held; then one
    with filtered egress (:func:`measure_egress`). Sets ``runtime.egress_problem``."""
    report = _measure_base(runtime, gpu_indices=gpu_indices)
    report = _with_cluster_network(runtime, report)
    problem = measure_egress(runtime) if report.runtime == "bwrap" else "no sandbox"
    runtime.egress_problem = problem
    if problem is None:
        return report.model_copy(update={"egress_filter": True})
    log.warning("filtered egress is not available here: %s", problem)
    return report.model_copy(
        update={
            "problems": [
                *report.problems,
                f"network egress: {problem}; other accounts' code that asks for network= is "
                "not placed here (only the host owner's own code may have the host's network)",
            ][:64]
        }
    )


def _with_cluster_network(runtime: SandboxRuntime, report: IsolationReport) -> IsolationReport:
    """``report`` with what :func:`crucible.agent.clusternet.measure` found (and sets
    ``runtime.cluster_net_problem``)."""
    port = runtime.cluster_nets.port
    problem = clusternet.measure(port) if report.runtime == "bwrap" else "no sandbox"
    runtime.cluster_net_problem = problem
    if problem is None:
        return report.model_copy(update={"cluster_network": True, "cluster_net_port": port})
    log.warning("cluster networks cannot be built here: %s", problem)
    return report.model_copy(
        update={
            "problems": [
                *report.problems,
                f"cluster network: {problem}; other accounts' clusters are not placed here",
            ][:64]
        }
    )


def _new_probe_config(
    runtime: SandboxRuntime, gpu_indices: list[int] | None = None
) -> SandboxConfig:
    name = f"probe-{uuid.uuid4().hex[:12]}"
    sdir = runtime.sandboxes_dir / name
    (sdir / "code").mkdir(parents=True, exist_ok=True)
    root = _crucible_import_root()
    return SandboxConfig(
        name=name,
        dir=sdir,
        python=sys.executable,
        preload=[],
        disk_bytes=runtime.limits.disk_bytes,
        env={"PYTHONPATH": root} if root else {},
        gpu_indices=list(gpu_indices or [])[:1],
        gpu_dev_root=runtime.limits.gpu_dev_root,
    )


def measure_egress(runtime: SandboxRuntime) -> str | None:
    """Whether this host gives sandboxes filtered egress, measured: a sandbox with
    ``network=True``'s filter (plus one host port let through for the probe) must reach that
    port through slirp4netns, and must not reach another port on the same host address, the
    user-mode gateway (the host), the server's port or 169.254.169.254. None when all of that
    held, else why not. The refused connections stop at the sandbox's own filter: nothing is
    sent to a real network."""
    problem = egress_tools_problem()
    if problem is not None:
        return problem
    if runtime.uids is None:
        return "the agent is not root, so it cannot install a sandbox's egress filter"
    addrs = [a for a in host_addresses() if not a.is_loopback]
    allowed = socket.socket()
    closed = socket.socket()
    try:
        allowed.bind(("0.0.0.0", 0))
        allowed.listen(8)
        closed.bind(("0.0.0.0", 0))
        closed.listen(8)
        a_port, c_port = allowed.getsockname()[1], closed.getsockname()[1]
        server_port = _server_ports(runtime.server_url)[0]
        plan = plan_egress(True, server_url=runtime.server_url, addresses=addrs)
        must = []
        if addrs:
            host = str(addrs[0].network_address)
            plan = replace(plan, probe=EgressRule(addrs[0], a_port, a_port))
            must.append((host, a_port))
        must_not = [(str(a.network_address), c_port) for a in addrs]
        must_not += [(str(a.network_address), server_port) for a in addrs]
        must_not += [("10.0.2.2", c_port), ("10.0.2.2", server_port), ("169.254.169.254", 80)]
        cfg = _new_probe_config(runtime)
        cfg.egress = plan
        uid = runtime.uids.acquire()
        cfg.host_uid = uid.uid
        try:
            seen = _run_probe(runtime, cfg, [server_port], must + must_not)
        finally:
            shutil.rmtree(cfg.run_dir, ignore_errors=True)
            remove_stage(cfg)
            shutil.rmtree(cfg.dir, ignore_errors=True)
            uid.release()
    except (OSError, RuntimeError, ValueError) as exc:
        return f"the egress probe failed: {exc}"[:600]
    finally:
        allowed.close()
        closed.close()
    return judge_egress(seen, must, must_not)


def judge_egress(
    seen: dict[str, Any], must: list[tuple[str, int]], must_not: list[tuple[str, int]]
) -> str | None:
    """Why the egress probe's observations fall short (None: the filter held)."""
    results: dict[str, str] = seen.get("targets", {})
    if "tap0" not in seen.get("interfaces", []):
        return "the sandbox got no user-mode network interface (slirp4netns)"
    reached = [t for t in must_not if results.get(f"{t[0]}:{t[1]}") in ("connected", None)]
    if reached:
        return "the filter let the sandbox reach " + ", ".join(f"{h}:{p}" for h, p in reached)
    if any(results.get(f"{h}:{p}") != "connected" for h, p in must):
        return (
            "the sandbox could not reach an allowed address through slirp4netns ("
            + ", ".join(f"{h}:{p} {results.get(f'{h}:{p}')}" for h, p in must)
            + ")"
        )
    if any(v == "connected" for v in seen.get("loopback", {}).values()):
        return "the sandbox reached the server's port on its loopback"
    return None


def _measure_base(
    runtime: SandboxRuntime, *, gpu_indices: list[int] | None = None
) -> IsolationReport:
    cfg = _new_probe_config(runtime, gpu_indices)
    sdir = cfg.dir
    uid = runtime.uids.acquire() if runtime.uids is not None else None
    cfg.host_uid = uid.uid if uid is not None else None
    try:
        seen = _run_probe(runtime, cfg, _server_ports(runtime.server_url))
    except (OSError, RuntimeError, ValueError) as exc:
        log.warning("the isolation probe failed: %s", exc)
        return IsolationReport(
            runtime="bwrap",
            problems=[f"the agent could not run its isolation probe in a sandbox: {exc}"[:1000]],
        )
    finally:
        shutil.rmtree(cfg.run_dir, ignore_errors=True)
        remove_stage(cfg)
        shutil.rmtree(sdir, ignore_errors=True)
        if uid is not None:
            uid.release()
    return judge(seen, cfg, runtime.limits.max_pids)


def judge(seen: dict[str, Any], cfg: SandboxConfig, max_pids: int) -> IsolationReport:
    """Compare the probe's observations with what ``cfg`` meant to enforce."""
    problems: list[str] = []
    ns = seen.get("namespaces", {})
    mine = {n: os.stat(f"/proc/self/ns/{n}").st_ino for n in (*_HOST_NAMESPACES, "net")}
    same = [n for n in _HOST_NAMESPACES if not ns.get(n) or ns.get(n) == mine[n]]
    namespaces = not same and int(seen.get("processes", 99)) <= 3
    if not namespaces:
        problems.append(
            "namespaces: the sandbox shares the host's "
            + (", ".join(same) or "process table")
            + " namespace; use a kernel with user namespaces enabled"
        )
    seccomp_on = seen.get("seccomp") == "2"
    if not seccomp_on:
        problems.append(
            "seccomp: no syscall filter was in effect inside the sandbox; use a kernel built with "
            "CONFIG_SECCOMP_FILTER"
        )
    # From the host: every process of the sandbox (bwrap and what runs in it) had the
    # sandbox's own uid, not root's nor the agent's.
    per_uid = (
        cfg.host_uid is not None
        and seen.get("_host_uids") == [cfg.host_uid]
        and cfg.host_uid not in (0, os.getuid())
        and seen.get("uid") == SANDBOX_UID
    )
    if not per_uid:
        problems.append(
            "per-sandbox uid: sandboxes run as the agent's own host uid, so process counts, "
            "signals and files are shared between tenants; run the agent as root (it then gives "
            "each sandbox its own uid from CRUCIBLE_SANDBOX_UID_BASE)"
        )
    cg = seen.get("_cgroup", {})
    pids_limit = "none"
    if cg.get("pids"):
        pids_limit = "cgroup"
    elif int(seen.get("nproc", -1)) == max_pids:
        pids_limit = "rlimit-uid"
    if pids_limit == "none":
        problems.append(
            "process limit: neither a pids cgroup nor RLIMIT_NPROC held inside the sandbox"
        )
    elif pids_limit == "rlimit-uid" and not per_uid:
        problems.append(
            "process limit: RLIMIT_NPROC counts per uid and sandboxes share one, so a fork bomb "
            "starves every sandbox; give sandboxes their own uids (agent as root) or delegate "
            "a pids cgroup (docs/hosts.md)"
        )
    memory_limit = "cgroup" if cg.get("memory") else "rlimit"
    if memory_limit == "rlimit":
        problems.append(
            "memory: no memory cgroup, so only each container's address space is limited "
            "(files in its tmpfs are not); delegate cgroups to the agent (docs/hosts.md)"
        )
    cpu_limit = "cgroup" if cg.get("cpu") else "none"
    if cpu_limit == "none":
        problems.append(
            "CPU: no cpu cgroup, so a sandbox may use every core (cpu= is a share, not a "
            "quota); delegate cgroups to the agent (docs/hosts.md)"
        )
    disk = seen.get("disk", {})
    disk_ok = all(
        d.get("fstype") == "tmpfs" and 0 < int(d.get("bytes", 0)) <= cfg.disk_bytes + (1 << 20)
        for d in (disk.get("/tmp", {}), disk.get("/crucible/work", {}))
    )
    if not disk_ok:
        problems.append(
            "disk: the sandbox's /tmp and /crucible/work were not size-limited tmpfs mounts"
        )
    loopback = seen.get("loopback", {})
    network_ok = (
        ns.get("net") not in (None, 0, mine["net"])
        and set(seen.get("interfaces", [])) <= {"lo"}
        and all(v != "connected" for v in loopback.values())
        and seen.get("link_local") not in ("connected", "not tried")
    )
    if not network_ok:
        problems.append(
            "network: the sandbox reached the host's network (its loopback or an interface); "
            "the agent must run sandboxes in their own network namespace"
        )
    expected = {inside.removeprefix("/dev/") for _, inside in gpu_nodes(cfg)}
    dev = set(seen.get("dev", []))
    gpu_seen = {d for d in dev if d.startswith("nvidia")}
    gpu_ok = gpu_seen == expected
    if not gpu_ok:
        problems.append(
            "GPU: a sandbox saw device nodes of GPUs it was not given ("
            + ", ".join(sorted(gpu_seen - expected))
            + ")"
        )
    return IsolationReport(
        runtime="bwrap",
        namespaces=namespaces,
        seccomp=seccomp_on,
        per_sandbox_uid=per_uid,
        pids_limit=pids_limit,  # type: ignore[arg-type]
        memory_limit=memory_limit,  # type: ignore[arg-type]
        cpu_limit=cpu_limit,  # type: ignore[arg-type]
        disk_limit="tmpfs" if disk_ok else "none",
        network_policy=network_ok,
        gpu_isolation=gpu_ok,
        problems=problems,
    )
