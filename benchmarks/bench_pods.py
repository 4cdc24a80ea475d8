"""Pods: create → SSH-ready (cached image, cold pull), exec round trip, tunnel throughput.

One exchange (server and one agent, subprocesses on loopback, the ``bwrap`` runtime where
bwrap works) and a real registry (Debian's ``docker-registry``) on loopback holding a Python
image assembled from this machine's system Python (:mod:`oci_testlib`, as
``bench_images.py``) plus Debian's static busybox as its shell (SSH into an OCI image runs the
agent's own SSH server, agent/ssh_bundle.py, and needs a shell in the image). Side by side, in
one run:

* **create → SSH-ready**: from ``crucible.Pod.create`` until
  ``ssh -o ProxyCommand='crucible pod proxy %h' crucible@POD true`` succeeds (the pod's own
  ``ssh_keys``), for the exchange's default image, for an image the agent has cached, and for
  the first pod of that image (a cold pull from the loopback registry; one sample: the cache
  is warm after it). The pull's MB/s is measured with ``measure_pulls()`` (the agent's own
  OCI cache) into an empty cache;
* **exec round trip**: ``pod exec -- true`` (``sdk._tunnels.exec_command``) against starting
  ``true`` locally, p50/p99;
* **tunnel throughput**: ``--mib`` MiB echoed through ``pod port-forward`` (every byte crosses
  the relay twice) against the same through a direct loopback connection.

Needs dropbear and the OpenSSH client for the SSH rows (``scripts/setup dev``); without them,
or without bwrap / the registry, the rows that need them say so. Prints a table and writes
``benchmarks/results/bench_pods.json``::

    .venv/bin/python benchmarks/bench_pods.py                    # ~2-3 minutes
    .venv/bin/python benchmarks/bench_pods.py --pods 10 --n 100 --mib 256
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

import _access_app as aapp  # noqa: E402
from _exchange import (  # noqa: E402
    Exchange,
    machine_info,
    print_table,
    summarize_ms,
    write_results,
)
from bench_access import _can_connect, _echo_roundtrip, _mbps  # noqa: E402
from bench_images import measure_pulls  # noqa: E402

import crucible  # noqa: E402
from crucible.sdk import _tunnels  # noqa: E402
from crucible.sdk._client import Client  # noqa: E402
from crucible.testing import free_port, wait_for  # noqa: E402

# The pod's command: an echo server on ECHO_PORT (no single quotes: it goes in sh -c '...').
ECHO = """
import os, socket, threading
s = socket.create_server(("127.0.0.1", int(os.environ["ECHO_PORT"])))
def h(c):
    with c:
        while d := c.recv(65536):
            c.sendall(d)
while True:
    c, _ = s.accept()
    threading.Thread(target=h, args=(c,), daemon=True).start()
"""


def _bwrap_works() -> bool:
    if not shutil.which("bwrap"):
        return False
    probe = ["bwrap", "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"]
    return subprocess.run(probe, capture_output=True).returncode == 0


def _ssh_available() -> bool:
    """dropbear (the pod's SSH server), nss_wrapper and the OpenSSH client, as the access
    layer needs them (scripts/setup dev installs them)."""
    return (
        all(shutil.which(c) for c in ("ssh", "ssh-keygen"))
        and any(Path(p).exists() for p in ("/usr/sbin/dropbear", "/usr/bin/dropbear"))
        and bool(
            glob.glob("/usr/lib/*/libnss_wrapper.so") + glob.glob("/usr/lib/libnss_wrapper.so")
        )
    )


class PodTimer:
    """Creates pods, times create → running → SSH-ready, and removes them."""

    def __init__(self, ex: Exchange, token: str, client: Client, tmp: Path, ssh: bool) -> None:
        self.ex, self.token, self.client, self.tmp, self.ssh = ex, token, client, tmp, ssh
        self.count = 0
        self.key: Path | None = None
        if ssh:
            self.key = tmp / "benchkey"
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True
            )

    def _env(self) -> dict[str, str]:
        """The CLI's environment (``pod proxy`` runs as the ssh ProxyCommand)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
        env.update(
            CRUCIBLE_HOME=str(self.tmp / "cli-home"),
            CRUCIBLE_SERVER_URL=self.ex.url,
            CRUCIBLE_TOKEN=self.token,
        )
        return env

    def ssh_true(self, name: str) -> subprocess.CompletedProcess[str]:
        assert self.key is not None
        proxy = f"{sys.executable} -m crucible.cli.main pod proxy %h"
        argv = [
            "ssh", "-o", f"ProxyCommand={proxy}",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=20",
            "-i", str(self.key), f"crucible@{name}", "true",
        ]  # fmt: skip
        return subprocess.run(argv, env=self._env(), capture_output=True, text=True, timeout=60)

    def create(
        self, image: str | None, port: int, timeout_s: float = 120, ssh_timeout_s: float = 120
    ) -> dict[str, Any]:
        """One pod: seconds to running and to SSH-ready; the pod is left running."""
        self.count += 1
        name = f"bench-{self.count}"
        keys = [Path(f"{self.key}.pub").read_text()] if self.key else []
        cmd = None if image else f"exec python3 -c '{ECHO}'"
        t0 = time.perf_counter()
        pod = crucible.Pod.create(
            name,
            image=image,
            command=cmd,
            env={"ECHO_PORT": str(port)},
            ssh_keys=keys,
            client=self.client,
        )
        info = pod.wait("running", "failed", timeout_s=timeout_s)
        out: dict[str, Any] = {"pod": pod, "name": name, "state": info.state}
        if info.state != "running":
            out["error"] = f"pod {info.state}: {getattr(info, 'reason', None) or info}"
            return out
        out["running_s"] = time.perf_counter() - t0
        cid = pod.info().container_id
        deadline = time.monotonic() + timeout_s
        while cid and time.monotonic() < deadline:
            code = _try_exec(self.ex.url, self.token, cid)
            if code >= 0:  # the session reached the container (an image may lack `true`)
                out["exec_ready_s"] = time.perf_counter() - t0
                break
            time.sleep(0.2)
        if not self.ssh:
            return out
        deadline = time.monotonic() + ssh_timeout_s
        last = ""
        while time.monotonic() < deadline:
            run = self.ssh_true(name)
            if run.returncode == 0:
                out["ssh_ready_s"] = time.perf_counter() - t0
                return out
            last = run.stderr.strip()[-300:]
            time.sleep(0.2)
        out["error"] = f"ssh never succeeded: {last}"
        return out

    @staticmethod
    def remove(pod: crucible.Pod) -> None:
        try:
            pod.stop()
            pod.wait("stopped", "failed", "preempted", timeout_s=60)
        finally:
            pod.delete()


def _series(samples: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    values = [s[key] for s in samples if key in s]
    return summarize_ms(values) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", default="auto", choices=["auto", "bwrap", "process"])
    parser.add_argument("--pods", type=int, default=2, help="Pods timed per image (warm).")
    parser.add_argument("--n", type=int, default=20, help="Exec round trips.")
    parser.add_argument("--mib", type=int, default=32, help="MiB echoed per throughput run.")
    parser.add_argument("--repeat", type=int, default=2, help="Throughput runs of each path.")
    parser.add_argument(
        "--image-ssh-timeout", type=float, default=120, help="Seconds to try SSH on an image pod."
    )
    args = parser.parse_args()

    bwrap = _bwrap_works()
    runtime = args.runtime if args.runtime != "auto" else ("bwrap" if bwrap else "process")
    notes: list[str] = []
    if runtime == "process":
        notes.append(
            "bwrap unavailable (or --runtime process): the process runtime cannot run OCI "
            "images, so the image rows are skipped"
        )
    ssh = _ssh_available()
    if not ssh:
        notes.append("no dropbear / OpenSSH client (scripts/setup dev): SSH-ready not measured")
    results: dict[str, Any] = {"machine": machine_info(), "args": vars(args), "runtime": runtime}

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-pods-")))
        env = {"CRUCIBLE_RUNTIME": runtime}
        ref = None
        reg = None
        if runtime == "bwrap":
            from oci_testlib import (
                SYSTEM_PYTHON,
                Entry,
                layer,
                push_image,
                python_rootfs_layers,
                run_registry,
            )

            if shutil.which("docker-registry") and Path(SYSTEM_PYTHON).exists():
                reg = stack.enter_context(run_registry(tmp / "registry"))
                layers = python_rootfs_layers([sysconfig.get_paths()["platlib"]])
                # A shell for SSH sessions (the agent brings the SSH server itself): Debian's
                # static busybox as /bin/sh, where this machine has it.
                busybox = next(
                    (b for b in ("/bin/busybox", "/usr/bin/busybox") if Path(b).exists()), None
                )
                if busybox is not None:
                    layers.append(
                        layer(
                            [
                                Entry("bin", kind="dir"),
                                Entry("bin/busybox", Path(busybox).read_bytes(), mode=0o755),
                                Entry("bin/sh", kind="symlink", target="busybox"),
                                Entry("bin/true", kind="symlink", target="busybox"),
                            ]
                        )
                    )
                else:
                    notes.append(
                        "no busybox (busybox-static): the image pods have no shell for SSH"
                    )
                push_image(
                    reg,
                    "bench/pod",
                    "v1",
                    layers,
                    env=["PATH=/usr/bin:/bin"],
                    entrypoint=[SYSTEM_PYTHON, "-c"],
                    cmd=[ECHO],
                )
                ref = f"{reg.host}/bench/pod:v1"
                results["image_mib"] = round(sum(len(x) for x in layers) / (1 << 20), 1)
                env["CRUCIBLE_OCI_INSECURE_REGISTRIES"] = reg.host
            else:
                notes.append("no docker-registry or system Python: the image rows are skipped")
        ex = stack.enter_context(Exchange(env=env))
        token = ex.owner_token("bench-pods")
        client = Client(ex.url, token)
        stack.callback(client.close)
        timer = PodTimer(ex, token, client, tmp, ssh)
        port = free_port()

        default = []
        for i in range(args.pods):
            s = timer.create(None, port)
            default.append(s)
            if i < args.pods - 1:
                timer.remove(s["pod"])
        keep = default[-1]  # exec and tunnels are measured on this pod

        cold: list[dict[str, Any]] = []
        cached: list[dict[str, Any]] = []
        if ref is not None:
            for i in range(args.pods + 1):
                s = timer.create(ref, free_port(), ssh_timeout_s=args.image_ssh_timeout)
                (cold if i == 0 else cached).append(s)
                timer.remove(s["pod"])
            assert reg is not None
            results["pull"] = measure_pulls(reg, ref, None, tmp / "pull-cache", 3)

        # exec round trip vs a local process start, on the default-image pod
        relay, local = [], []
        cid = keep["pod"].info().container_id if keep.get("state") == "running" else None
        if cid:
            for _ in range(args.n):
                t = time.perf_counter()
                code = _tunnels.exec_command(
                    ex.url, token, cid, ["true"], stdout=io.BytesIO(), stderr=io.BytesIO()
                )
                relay.append(time.perf_counter() - t)
                assert code == 0, code
                t = time.perf_counter()
                subprocess.run(["true"], check=True)
                local.append(time.perf_counter() - t)

            direct_port = free_port()
            threading.Thread(target=aapp.serve_echo, args=(direct_port,), daemon=True).start()
            wait_for(lambda: _can_connect(direct_port), timeout_s=10, what="local echo")
            stop = threading.Event()
            bound: list[int] = []
            ready = threading.Event()

            def listening(p: int) -> None:
                bound.append(p)
                ready.set()

            fwd = threading.Thread(
                target=_tunnels.port_forward,
                args=(ex.url, token, cid, 0, port),
                kwargs={"on_listening": listening, "stop": stop},
                daemon=True,
            )
            fwd.start()
            ready.wait(10)
            payload = bytes(range(256)) * (args.mib * 4096)
            small = b"ping" * 16
            # the pod's echo server may still be starting: wait for a first echo
            wait_for(
                lambda: _try(lambda: _echo_roundtrip(bound[0], small)),
                timeout_s=60,
                what="the pod's echo server",
            )
            tunnel_s = [_echo_roundtrip(bound[0], payload) for _ in range(args.repeat)]
            direct_s = [_echo_roundtrip(direct_port, payload) for _ in range(args.repeat)]
            stop.set()
            fwd.join(5)
            nbytes = 2 * len(payload)
            results["tunnel_mb_per_s"] = [_mbps(nbytes, x) for x in tunnel_s]
            results["direct_mb_per_s"] = [_mbps(nbytes, x) for x in direct_s]
        else:
            notes.append(f"the default-image pod did not run: {keep.get('error')}")
        if keep.get("pod") is not None:
            timer.remove(keep["pod"])

    def clean(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in s.items() if k != "pod"} for s in samples]

    results.update(
        samples={"default": clean(default), "cold": clean(cold), "cached": clean(cached)},
        running={
            "default": _series(default, "running_s"),
            "cold": _series(cold, "running_s"),
            "cached": _series(cached, "running_s"),
        },
        exec_ready={
            "default": _series(default, "exec_ready_s"),
            "cold": _series(cold, "exec_ready_s"),
            "cached": _series(cached, "exec_ready_s"),
        },
        ssh_ready={
            "default": _series(default, "ssh_ready_s"),
            "cold": _series(cold, "ssh_ready_s"),
            "cached": _series(cached, "ssh_ready_s"),
        },
        exec_relay=summarize_ms(relay) if relay else None,
        exec_local_process=summarize_ms(local) if local else None,
        notes=notes,
    )
    errors = [s["error"] for s in default + cold + cached if "error" in s]
    if errors:
        notes.append(f"{len(errors)} pod(s) did not reach SSH: {errors[0]}")

    def ms(series: dict[str, Any] | None, key: str = "p50_ms") -> Any:
        return series[key] if series else "-"

    rows: list[list[Any]] = []
    for label, key in (
        ("default image", "default"),
        ("cached OCI image", "cached"),
        ("cold pull (1 sample)", "cold"),
    ):
        rows.append(
            [
                f"create -> running p50, {label}",
                ms(results["running"][key]),
                "",
                "ms",
            ]
        )
        rows.append(
            [
                f"create -> exec-ready p50, {label}",
                ms(results["exec_ready"][key]),
                "",
                "ms",
            ]
        )
        rows.append(
            [
                f"create -> SSH-ready p50, {label}",
                ms(results["ssh_ready"][key]),
                "",
                "ms",
            ]
        )
    if "pull" in results:
        rows.append(
            [
                "cold pull (agent's OCI cache, loopback registry)",
                f"{results['pull']['cold_mib']:.1f} MiB in {results['pull']['cold_s']:.2f} s",
                f"{results['pull']['cold_mib_per_s']:.1f}",
                "MiB/s",
            ]
        )
    if relay:
        rows.append(
            [
                "exec `true` round trip p50 / p99 (pod vs local process)",
                f"{results['exec_relay']['p50_ms']} / {results['exec_relay']['p99_ms']}",
                f"{results['exec_local_process']['p50_ms']} / "
                f"{results['exec_local_process']['p99_ms']}",
                "ms",
            ]
        )
    if "tunnel_mb_per_s" in results:
        rows.append(
            [
                "echo throughput, best (port-forward vs direct loopback)",
                max(results["tunnel_mb_per_s"]),
                max(results["direct_mb_per_s"]),
                "MB/s",
            ]
        )
    print_table(
        f"Pods ({runtime} runtime, loopback; {args.pods} pods per image, {args.n} execs, "
        f"{args.mib} MiB echoed x{args.repeat})",
        ["what", "pod", "direct / rate", "unit"],
        rows,
    )
    for note in notes:
        print(f"note: {note}")
    path = write_results("bench_pods", results)
    print(f"\nresults: {path}")
    return 0


def _try_exec(url: str, token: str, cid: str) -> int:
    try:
        return _tunnels.exec_command(
            url, token, cid, ["true"], stdout=io.BytesIO(), stderr=io.BytesIO()
        )
    except Exception:  # not reachable yet: the caller retries
        return -1


def _try(fn: Any) -> bool:
    try:
        fn()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
