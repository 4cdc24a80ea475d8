"""The agent measures its isolation (a probe sandbox), and GPU device isolation, tested with
fake device nodes: regular files in a directory the agent is told is its /dev
(``CRUCIBLE_GPU_DEV_ROOT``). Production keeps /dev."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import app_hostile as h
import pytest
from sandbox_testlib import SANDBOX_ENV, bwrap_or_skip

from crucible.agent.egress import egress_tools_problem
from crucible.agent.isolation import judge, judge_egress, measure_sandbox, process_report
from crucible.agent.runtimes import build_runtime, measure_isolation, resolve_runtime
from crucible.agent.sandbox import (
    SandboxConfig,
    remove_stage,
    seccomp_program_fd,
    spawn_sandbox,
)
from crucible.agent.sandbox_runtime import NETWORK_REFUSED, SandboxRuntime
from crucible.agent.uids import UidPool, can_switch_uids
from crucible.settings import Settings

from harness import Exchange

FAKE_NODES = ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")


def fake_dev(root: Path) -> Path:
    dev = root / "fake-dev"
    dev.mkdir()
    for name in FAKE_NODES:
        (dev / name).write_text(name)
    return dev


def sandbox_runtime(tmp_path: Path, **settings: Any) -> SandboxRuntime:
    s = Settings(agent_dir=str(tmp_path / "agent"), runtime="bwrap", **settings)
    rt = build_runtime(s, s.agent_path, "http://127.0.0.1:9", worker_argv=None, on_exit=print)
    assert isinstance(rt, SandboxRuntime)
    return rt


def test_auto_is_the_sandbox_where_the_machine_supports_it() -> None:
    bwrap_or_skip()
    assert Settings().runtime == "auto"
    assert resolve_runtime(Settings()) == "bwrap"
    assert resolve_runtime(Settings(runtime="process")) == "process"
    assert resolve_runtime(Settings(bwrap_bin="no-such-bwrap")) == "process"


def test_process_runtime_reports_no_isolation(tmp_path: Path) -> None:
    s = Settings(agent_dir=str(tmp_path / "agent"), runtime="process")
    rt = build_runtime(s, s.agent_path, "http://127.0.0.1:9", worker_argv=None, on_exit=print)
    report = measure_isolation(rt)
    assert report == process_report()
    assert not report.full()
    assert "owner's code only" in report.problems[0]


@pytest.mark.parametrize("cgroups", [True, False])
def test_the_probe_measures_a_full_sandbox(tmp_path: Path, cgroups: bool) -> None:
    bwrap_or_skip()
    if not can_switch_uids():
        pytest.skip("per-sandbox uids need the agent to run as root")
    rt = sandbox_runtime(tmp_path, sandbox_cgroups=cgroups)
    report = measure_sandbox(rt)
    assert report.full(), report.problems
    assert report.per_sandbox_uid and report.namespaces and report.seccomp
    assert report.network_policy and report.disk_limit == "tmpfs"
    if not cgroups:
        # Without delegation: the sandbox's own uid makes RLIMIT_NPROC per sandbox.
        assert report.pids_limit == "rlimit-uid"
        assert report.cpu_limit == "none"
        assert any(p.startswith("CPU: no cpu cgroup") for p in report.problems)


def test_a_sandbox_sharing_the_agents_uid_is_not_full(tmp_path: Path) -> None:
    bwrap_or_skip()
    rt = sandbox_runtime(tmp_path, sandbox_cgroups=False)
    rt.uids = None  # what an agent that is not root has
    report = measure_sandbox(rt)
    assert not report.per_sandbox_uid
    assert not report.full()
    assert any("run the agent as root" in p for p in report.problems)


def test_judge_flags_gpu_nodes_a_sandbox_was_not_given(tmp_path: Path) -> None:
    cfg = SandboxConfig(
        name="x", dir=tmp_path, python=sys.executable, preload=[], run_dir=tmp_path / "run"
    )
    seen = {"dev": ["null", "nvidia0", "nvidiactl"], "uid": 1000}
    report = judge(seen, cfg, 64)
    assert not report.gpu_isolation
    assert any("nvidia0" in p and "GPU" in p for p in report.problems)


def test_a_sandbox_sees_only_its_gpus_device_nodes(tmp_path: Path) -> None:
    bwrap_or_skip()
    dev = fake_dev(tmp_path)
    (tmp_path / "box" / "code").mkdir(parents=True)
    cfg = SandboxConfig(
        name="gpu",
        dir=tmp_path / "box",
        python=sys.executable,
        preload=[],
        gpu_indices=[1],
        gpu_dev_root=str(dev),
    )  # its run_dir: a fresh directory under /tmp, which the sandbox's uid can reach
    uid = UidPool(2_140_000_000, 16).acquire() if can_switch_uids() else None
    cfg.host_uid = uid.uid if uid else None
    fd = seccomp_program_fd()
    try:
        with open(tmp_path / "out", "wb") as out:
            proc, _ = spawn_sandbox(
                "bwrap",
                cfg,
                None,
                fd,
                cgroup=None,
                limits={},
                stdout=out,
                command=["/bin/sh", "-c", "ls /dev; cat /dev/nvidia1"],
            )
            assert proc.wait(timeout=30) == 0, (tmp_path / "out").read_text()
    finally:
        os.close(fd)
        if uid:
            uid.release()
        remove_stage(cfg)
        shutil.rmtree(cfg.run_dir, ignore_errors=True)
    lines = (tmp_path / "out").read_text().split()
    assert "nvidia1" in lines and "nvidiactl" in lines and "nvidia-uvm" in lines
    assert "nvidia0" not in lines
    assert lines[-1] == "nvidia1"  # the node is the host's node 1, bound at /dev/nvidia1


@pytest.fixture(scope="module")
def gpu_exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    bwrap_or_skip()
    root = tmp_path_factory.mktemp("gpus")
    dev = fake_dev(root)
    env = {**SANDBOX_ENV, "CRUCIBLE_GPU_DEV_ROOT": str(dev), "CRUCIBLE_ALLOW_FAKE_GPUS": "1"}
    ex = Exchange(root, f"sqlite:///{root / 'store.db'}", **env)
    ex.start_server()
    try:
        ex.start_agent("gpu-host", fake_gpus="2xH100-80GB")
        yield ex
    finally:
        ex.close()


def test_a_container_sees_only_its_assigned_gpu(gpu_exchange: Exchange) -> None:
    client = gpu_exchange.client(gpu_exchange.new_account("gpu-tenant"))
    with h.gpus.run(client=client):
        seen = h.gpu_devices.remote()
    assert seen["cuda"] in {"0", "1"}
    own = f"nvidia{seen['cuda']}"
    other = "nvidia1" if own == "nvidia0" else "nvidia0"
    assert own in seen["dev"] and other not in seen["dev"], seen
    assert {"nvidiactl", "nvidia-uvm"} <= set(seen["dev"])


def test_network_functions_are_refused_with_a_reason() -> None:
    assert "network egress is refused" in NETWORK_REFUSED
    assert "169.254.0.0/16" in NETWORK_REFUSED


def test_the_probe_measures_filtered_egress_where_the_host_has_it(tmp_path: Path) -> None:
    bwrap_or_skip()
    if not can_switch_uids():
        pytest.skip("the egress filter needs the agent to run as root")
    if egress_tools_problem() is not None:
        pytest.skip(f"no egress tools here: {egress_tools_problem()}")
    rt = sandbox_runtime(tmp_path, sandbox_cgroups=False)
    report = measure_sandbox(rt)
    assert report.egress_filter, report.problems
    assert rt.egress_problem is None
    assert "egress filtered" in report.summary()
    # The same host builds clusters' private networks (measured: a bridge, a VXLAN link on
    # the port it announces, a member namespace joined).
    assert report.cluster_network, report.problems
    assert report.cluster_net_port == rt.cluster_nets.port
    assert rt.cluster_net_problem is None
    assert "cluster network" in report.summary()


def test_a_host_without_egress_tools_reports_why(tmp_path: Path) -> None:
    bwrap_or_skip()
    rt = sandbox_runtime(tmp_path, sandbox_cgroups=False)
    rt.uids = None  # an agent that is not root cannot install a sandbox's filter
    report = measure_sandbox(rt)
    assert not report.egress_filter
    assert rt.egress_problem is not None
    assert any(p.startswith("network egress:") for p in report.problems), report.problems


def test_judge_egress_fails_when_a_forbidden_target_answered() -> None:
    must, must_not = [("192.0.2.2", 4000)], [("192.0.2.2", 5000), ("169.254.169.254", 80)]
    ok = {
        "interfaces": ["lo", "tap0"],
        "targets": {
            "192.0.2.2:4000": "connected",
            "192.0.2.2:5000": "EHOSTUNREACH",
            "169.254.169.254:80": "EHOSTUNREACH",
        },
    }
    assert judge_egress(ok, must, must_not) is None
    leaked = {**ok, "targets": {**ok["targets"], "169.254.169.254:80": "connected"}}
    assert "169.254.169.254:80" in str(judge_egress(leaked, must, must_not))
    assert "no user-mode network" in str(judge_egress({**ok, "interfaces": ["lo"]}, must, must_not))


def test_agent_logs_its_isolation_at_start(tmp_path: Path) -> None:
    """`crucible agent` measures before it registers (the server is not even reachable)."""
    bwrap_or_skip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    env["CRUCIBLE_AGENT_DIR"] = str(tmp_path / "agent")
    cmd = [sys.executable, "-m", "crucible.cli.main", "agent", "--server", "http://127.0.0.1:9"]
    cmd += ["--token", "t"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        text = ""
        for raw in proc.stdout:
            text += raw.decode("utf-8", "replace")
            if "isolation (bwrap)" in text:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stdout is not None:
            proc.stdout.close()
    assert "isolation (bwrap): full" in text or "isolation (bwrap): not full" in text


def test_a_host_that_cannot_build_cluster_networks_reports_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bwrap_or_skip()
    from crucible.agent import clusternet

    rt = sandbox_runtime(tmp_path, sandbox_cgroups=False)
    monkeypatch.setattr(clusternet.shutil, "which", lambda name: None)  # no iproute2 here
    report = measure_sandbox(rt)
    assert not report.cluster_network and report.cluster_net_port is None
    assert rt.cluster_net_problem and "not found" in rt.cluster_net_problem
    assert any(p.startswith("cluster network:") for p in report.problems), report.problems
