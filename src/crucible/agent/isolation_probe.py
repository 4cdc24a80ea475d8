"""The agent's isolation probe: runs INSIDE a freshly built sandbox at the agent's start-up and
prints what it sees as one JSON object. :mod:`crucible.agent.isolation` compares that with what
the agent meant to enforce. Standard library only; it must not change anything.

Run as ``python -m crucible.agent.isolation_probe '<json>'`` where the JSON carries the ports
to try on loopback (``ports``) and the control socket's fd (``fd``): the observations go there,
then the probe waits for the agent to close it, so the agent can look at the sandbox's
processes from the host while they live.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import socket
import sys
from typing import Any

__all__ = ["main", "observe"]

_NAMESPACES = ("user", "pid", "mnt", "ipc", "uts", "net", "cgroup")
_LINK_LOCAL = ("169.254.169.254", 80)  # the cloud metadata address every VM has


def _connect(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=2):
            return "connected"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def _mounts() -> dict[str, str]:
    out = {}
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                out[parts[1]] = parts[2]
    return out


def observe(ports: list[int], targets: list[tuple[str, int]] | None = None) -> dict[str, Any]:
    """What this process sees of its sandbox."""
    ns = {}
    for name in _NAMESPACES:
        try:
            ns[name] = os.stat(f"/proc/self/ns/{name}").st_ino
        except OSError:
            ns[name] = 0
    status = {}
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    with open("/proc/self/uid_map", encoding="utf-8") as f:
        uid_map = [line.split() for line in f if line.strip()]
    mounts = _mounts()
    disk = {}
    for path in ("/tmp", "/crucible/work"):
        st = os.statvfs(path)
        disk[path] = {"fstype": mounts.get(path, ""), "bytes": st.f_blocks * st.f_frsize}
    try:
        with open("/proc/net/dev", encoding="utf-8") as f:
            interfaces = [line.split(":")[0].strip() for line in f.readlines()[2:]]
    except OSError:
        interfaces = []
    return {
        "uid": os.getuid(),
        "uid_map": uid_map,
        "namespaces": ns,
        "seccomp": status.get("Seccomp", ""),
        "cap_eff": status.get("CapEff", ""),
        "nproc": resource.getrlimit(resource.RLIMIT_NPROC)[0],
        "fsize": resource.getrlimit(resource.RLIMIT_FSIZE)[0],
        "disk": disk,
        "dev": sorted(os.listdir("/dev")),
        "processes": sum(1 for p in os.listdir("/proc") if p.isdigit()),
        "interfaces": interfaces,
        "loopback": {str(p): _connect("127.0.0.1", p) for p in ports},
        # Only tried where it cannot leave the machine (no interface but loopback): a probe
        # never sends traffic to a real network.
        "link_local": _connect(*_LINK_LOCAL) if set(interfaces) <= {"lo"} else "not tried",
        # The egress probe's targets (its sandbox's filter refuses all but one of them
        # locally, so these tries never leave the machine when the filter holds).
        "targets": {f"{h}:{p}": _connect(h, int(p)) for h, p in targets or []},
    }


def main(argv: list[str] | None = None) -> int:
    args = json.loads((argv if argv is not None else sys.argv[1:])[0])
    targets = [(str(h), int(p)) for h, p in args.get("targets", [])]
    seen = json.dumps(observe([int(p) for p in args.get("ports", [])], targets)).encode() + b"\n"
    with socket.socket(fileno=int(args["fd"])) as ctrl:
        ctrl.sendall(seen)
        while ctrl.recv(4096):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
