"""The embedded exchange as a user meets it: `crucible up --detach` reports what runs, the
agent is restarted when it dies, one exchange per home (a second `up` on any port is refused,
`down` finds it whatever its port), a taken port is named with what holds it, and a start
that fails says why with the log's last lines."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from harness import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _env(home: Path, port: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    env["CRUCIBLE_HOME"] = str(home)
    env["CRUCIBLE_STOP_GRACE_S"] = "1"
    if port is not None:
        env["CRUCIBLE_PORT"] = str(port)
    return env


def _crucible(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _child(pid: int, command: str) -> int | None:
    """The child of ``pid`` running `crucible COMMAND` (agent or server)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z" and command.encode() in argv:
                return int(entry.name)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def _up_pid(home: Path) -> int:
    import json

    return int(json.loads((home / "up.lock").read_text())["pid"])


def test_one_supervised_exchange_per_home(tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    env = _env(home, port)
    try:
        up = _crucible(["up", "--detach"], env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"Crucible is up at http://127.0.0.1:{port}" in up.stdout
        assert "control plane: answering" in up.stdout and " ready, " in up.stdout, up.stdout
        pid = _up_pid(home)

        # Same home, another port: refused, naming the running one and how to stop it.
        other_port = free_port()
        for args in (["up", "--detach"], ["up"]):
            second = _crucible([*args, "--port", str(other_port)], _env(home))
            assert second.returncode == 1, second.stdout + second.stderr
            assert f"pid {pid}" in second.stderr and f":{port}" in second.stderr, second.stderr
            assert "crucible down" in second.stderr
        # A server given the same SQLite store by URL, from this home or another: refused
        # (it would schedule beside the running one and run calls twice).
        for other_home in (home, tmp_path / "elsewhere"):
            db = f"sqlite:///{home / 'crucible.db'}"
            server = _crucible(
                ["server", "--database-url", db, "--port", str(other_port)], _env(other_home)
            )
            assert server.returncode == 1, server.stdout + server.stderr
            text = " ".join(server.stderr.split())
            assert f"a server is already running on the SQLite store {home}" in text, text
            assert f":{port}" in text and "Traceback" not in text
        # Same home and port: already up, and says so.
        again = _crucible(["up", "--detach"], env)
        assert again.returncode == 0 and "already up" in again.stdout, again.stdout

        # Another home on the taken port: which port, what holds it, how to choose another.
        taken = _crucible(["run", "examples/hello.py"], _env(tmp_path / "other", port))
        assert taken.returncode == 1, taken.stdout + taken.stderr
        assert (
            f"port {port}" in taken.stderr
            and f"another Crucible exchange (pid {pid}" in taken.stderr
        )
        assert str(home) in taken.stderr and "CRUCIBLE_PORT=" in taken.stderr
        assert "AssertionError" not in taken.stderr and "Traceback" not in taken.stderr

        # The agent dies, then the control plane: each is restarted, and work runs again.
        for command in ("agent", "server"):
            dead = _child(pid, command)
            assert dead is not None, command
            os.kill(dead, signal.SIGKILL)
            wait_for(lambda c=command, d=dead: _child(pid, c) not in (None, d), 30, "restart")
        run = _crucible(["run", "examples/hello.py"], _env(home))  # no port: found from home
        assert run.returncode == 0, run.stdout + run.stderr
        assert run.stdout.split()[0] == "49"
        agent, server = _child(pid, "agent"), _child(pid, "server")
        assert agent is not None and server is not None

        # `down` without the port finds it from the home; nothing is left running.
        down = _crucible(["down"], _env(home))
        assert down.returncode == 0 and f"pid {pid}" in down.stdout, down.stdout + down.stderr
        assert not _alive(pid) and not _alive(agent) and not _alive(server)
        assert "No exchange was running" in _crucible(["down"], _env(home)).stdout

        # Started again with fake GPUs: what it reports is this run's agent, not the last
        # run's host as the store still held it ("no GPUs" was printed).
        up = _crucible(["up", "--detach", "--fake-gpus", "2xH100"], env)
        assert up.returncode == 0 and "2 GPU(s)" in up.stdout, up.stdout + up.stderr
    finally:
        _crucible(["down"], _env(home))


def test_port_held_by_another_process_is_named(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        for args in (["run", "examples/hello.py"], ["up", "--detach"], ["up"]):
            out = _crucible(args, _env(tmp_path / "home", port))
            assert out.returncode == 1, out.stdout + out.stderr
            assert f"port {port} on 127.0.0.1 is taken by pid {os.getpid()}" in out.stderr
            assert "CRUCIBLE_PORT=" in out.stderr and "Traceback" not in out.stderr
    assert (
        not (tmp_path / "home" / "up.lock").exists()
        or "pid" not in (tmp_path / "home" / "up.lock").read_text()
    )


def test_a_failed_start_says_why(tmp_path: Path) -> None:
    env = _env(tmp_path / "home", free_port())
    env["CRUCIBLE_DATABASE_URL"] = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"
    out = _crucible(["up", "--detach"], env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "exited while starting" in out.stderr and "up.log" in out.stderr
    assert "Connection refused" in out.stderr  # the log's own words
    assert (
        not (tmp_path / "home" / "up.lock").exists()
        or "pid" not in (tmp_path / "home" / "up.lock").read_text()
    )
