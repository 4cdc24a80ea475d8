"""The process runtime with real child processes (small python -c scripts as workers)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from crucible.agent.runtime import ProcessRuntime
from crucible.protocol.containers import ContainerAssignment, ContainerReport

from agent_testlib import make_assignment, report_of, wait_exited, wait_for

MakeRuntime = Callable[..., ProcessRuntime]

SLEEPER = "import time; time.sleep(30)"


def test_normal_exit(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    rt = make_runtime("import os; print('hello from', os.getcwd())")
    rt.start(make_assignment("c1"))
    report = wait_exited(rt, "c1")
    assert (report.exit_code, report.reason, report.message) == (0, "exited", None)
    assert report.pid is not None
    cdir = tmp_path / "agent" / "containers" / "c1"
    assert f"hello from {cdir / 'work'}" in (cdir / "log").read_text()


def test_worker_environment(
    make_runtime: MakeRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRUCIBLE_TOKEN", "agent-secret-token")
    monkeypatch.setenv("SOME_OTHER_SECRET", "hunter2")
    rt = make_runtime("import json, os; json.dump(dict(os.environ), open('env.json', 'w'))")
    rt.start(make_assignment("c1", gpu_indices=[0, 2]))
    rt.start(make_assignment("c2"))
    wait_exited(rt, "c1")
    wait_exited(rt, "c2")
    cdir = tmp_path / "agent" / "containers" / "c1"
    env = json.loads((cdir / "work" / "env.json").read_text())
    assert "CRUCIBLE_TOKEN" not in env
    assert "agent-secret-token" not in json.dumps(env)
    assert "SOME_OTHER_SECRET" not in env
    assert env["CUDA_VISIBLE_DEVICES"] == "0,2"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "0,2"
    assert env["HOME"] == str(cdir / "work")
    assert env["CRUCIBLE_CONTAINER_ID"] == "c1"
    assert env["CRUCIBLE_CONTAINER_TOKEN"] == "container-token-c1"
    assert env["CRUCIBLE_SERVER_URL"] == "http://127.0.0.1:9"
    assert env["CRUCIBLE_CODE_CACHE"] == str(tmp_path / "agent" / "code")
    assert env["CRUCIBLE_ASSIGNMENT"] == str(cdir / "assignment.json")
    saved = ContainerAssignment.model_validate_json((cdir / "assignment.json").read_text())
    assert saved == make_assignment("c1", gpu_indices=[0, 2])
    # The assignment holds the container token: only the agent's user may read it.
    assert stat.S_IMODE((cdir / "assignment.json").stat().st_mode) == 0o600
    # No GPU assigned: an empty list of visible devices, not "all of them".
    env2 = json.loads((tmp_path / "agent/containers/c2/work/env.json").read_text())
    assert env2["CUDA_VISIBLE_DEVICES"] == ""


def test_nonzero_exit_reports_log_tail(make_runtime: MakeRuntime) -> None:
    script = "import sys\nfor i in range(30): print('line', i)\nraise SystemExit(3)"
    rt = make_runtime(script)
    rt.start(make_assignment("c1"))
    report = wait_exited(rt, "c1")
    assert (report.exit_code, report.reason) == (3, "exited")
    assert report.message is not None
    assert "status 3" in report.message
    assert "line 29" in report.message and "line 10" in report.message
    assert "line 9\n" not in report.message  # only the last 20 lines


def test_traceback_reaches_the_message(make_runtime: MakeRuntime) -> None:
    rt = make_runtime("raise RuntimeError('model weights missing')")
    rt.start(make_assignment("c1"))
    report = wait_exited(rt, "c1")
    assert report.exit_code == 1
    assert "RuntimeError: model weights missing" in (report.message or "")


def test_killed_from_outside(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(SLEEPER)
    rt.start(make_assignment("c1"))
    running = report_of(rt, "c1")
    assert running is not None and running.state == "running" and running.pid
    os.kill(running.pid, signal.SIGKILL)
    report = wait_exited(rt, "c1")
    assert (report.exit_code, report.reason) == (-signal.SIGKILL, "killed")
    assert "SIGKILL" in (report.message or "")


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    script = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"open({str(ready)!r}, 'w').close()\n"
        "time.sleep(30)"
    )
    rt = make_runtime(script, stop_grace_s=0.3)
    rt.start(make_assignment("c1"))
    wait_for(ready.exists, what="the worker to ignore SIGTERM")
    t0 = time.monotonic()
    assert rt.stop("c1") is True
    assert time.monotonic() - t0 < 0.2  # non-blocking
    assert rt.stop("c1") is False  # idempotent
    assert report_of(rt, "c1").state == "running"  # type: ignore[union-attr]
    report = wait_exited(rt, "c1")
    assert time.monotonic() - t0 >= 0.3
    assert (report.exit_code, report.reason) == (-signal.SIGKILL, "stopped")
    assert "SIGKILL" in (report.message or "")


def test_stop_with_sigterm(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(SLEEPER, stop_grace_s=10.0)
    rt.start(make_assignment("c1"))
    rt.stop("c1")
    report = wait_exited(rt, "c1", timeout_s=3.0)  # well before the 10 s escalation
    assert (report.exit_code, report.reason) == (-signal.SIGTERM, "stopped")
    rt.stop("c1")
    rt.stop("unknown-id")  # ignored


def test_leftover_processes_in_the_group_are_killed(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    pidfile = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
    )
    rt = make_runtime(script)
    rt.start(make_assignment("c1"))
    assert wait_exited(rt, "c1").exit_code == 0
    grandchild = int(pidfile.read_text())

    wait_for(lambda: _dead(grandchild), what="the grandchild to be killed")


def test_start_is_idempotent_and_forget_cleans_up(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    rt = make_runtime(f"open({str(runs)!r}, 'a').write('run\\n')")
    a = make_assignment("c1")
    rt.start(a)
    rt.start(a)
    wait_exited(rt, "c1")
    rt.start(a)  # still known: ignored
    assert runs.read_text() == "run\n"
    cdir = tmp_path / "agent" / "containers" / "c1"
    assert cdir.is_dir()
    assert rt.forget("c1") is True
    assert not cdir.exists()
    assert report_of(rt, "c1") is None
    assert rt.forget("c1") is False


def test_forget_refuses_running_containers(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(SLEEPER)
    rt.start(make_assignment("c1"))
    assert rt.forget("c1") is False
    assert rt.knows("c1")


def test_on_exit_is_called_once_per_container(make_runtime: MakeRuntime) -> None:
    seen: list[ContainerReport] = []
    rt = make_runtime("pass", on_exit=seen.append)
    rt.start(make_assignment("c1"))
    wait_for(lambda: seen, what="on_exit")
    for _ in range(5):
        rt.poll()
    time.sleep(0.05)
    assert [(r.container_id, r.state, r.reason) for r in seen] == [("c1", "exited", "exited")]


def test_start_failures_are_reported(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    rt = ProcessRuntime(
        tmp_path / "agent", "http://127.0.0.1:9", worker_argv=[str(tmp_path / "no-such-binary")]
    )
    rt.start(make_assignment("c1"))
    rt.start(make_assignment("../escape"))
    reports = {r.container_id: r for r in rt.poll()}
    assert reports["c1"].reason == "start_failed"
    assert "cannot start the worker" in (reports["c1"].message or "")
    assert reports["../escape"].reason == "start_failed"
    assert not (tmp_path / "escape").exists()


def test_stop_all_ends_everything(make_runtime: MakeRuntime) -> None:
    rt = make_runtime(SLEEPER)
    for i in range(3):
        rt.start(make_assignment(f"c{i}"))
    t0 = time.monotonic()
    rt.stop_all()
    assert time.monotonic() - t0 < 2.0
    assert {(r.state, r.reason) for r in rt.poll()} == {("exited", "stopped")}


def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].startswith("Z")  # a zombie awaiting its reaper
    except FileNotFoundError:
        return True


def test_workers_die_with_the_agent(tmp_path: Path) -> None:
    # A throwaway "agent" process starts a container, then is SIGKILLed (no cleanup runs):
    # PR_SET_PDEATHSIG must take the worker down with it.
    pidfile = tmp_path / "worker.pid"
    agent_script = f"""
import sys, time
from pathlib import Path
from crucible.agent.runtime import ProcessRuntime
from agent_testlib import make_assignment, py, report_of, wait_for
rt = ProcessRuntime(Path({str(tmp_path / "agent")!r}), "http://127.0.0.1:9",
                    worker_argv=py("import time; time.sleep(30)"))
rt.start(make_assignment("c1"))
pid = wait_for(lambda: report_of(rt, "c1").pid)
Path({str(pidfile)!r}).write_text(str(pid))
time.sleep(30)
"""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": os.pathsep.join(sys.path)}
    agent = subprocess.Popen([sys.executable, "-c", agent_script], env=env)
    try:
        wait_for(pidfile.exists, timeout_s=10.0, what="the worker to start")
        worker = int(pidfile.read_text())
        assert not _dead(worker)
    finally:
        agent.kill()
        agent.wait()
    wait_for(lambda: _dead(worker), what="the worker to die with its agent")
