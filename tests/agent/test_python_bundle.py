"""The agent's own Python copied for pods from images without one (agent/python_bundle.py,
agent/host_bundle.py): what the bundle holds, that its interpreter runs through its own
loader with no LD_* variable, and that it is built once and again when a file changes."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from crucible.agent.host_bundle import build_bundle, run_prefix
from crucible.agent.images import host_python_paths
from crucible.agent.python_bundle import PYTHON_HOME, PythonBundle, python_argv

TAG = f"python{sys.version_info[0]}.{sys.version_info[1]}"


def test_the_bundle_runs_the_agents_python_through_its_own_loader(tmp_path: Path) -> None:
    bundle = PythonBundle(tmp_path / "pb", host_python_paths())
    rt = bundle.ensure()
    assert bundle.ensure() is rt  # built once per agent
    assert (rt.bundle / "ld.so").is_file() and (rt.bundle / "bin" / TAG).is_file()
    assert (rt.bundle / "lib" / TAG).is_dir()  # the standard library's mount point
    libs = os.listdir(rt.bundle / "libs")
    assert any(n.startswith("libc.so") for n in libs), libs
    assert rt.stdlib == Path(sysconfig.get_paths()["stdlib"])
    assert rt.mounts[0] == (rt.bundle, PYTHON_HOME)
    assert rt.mounts[1] == (rt.stdlib, f"{PYTHON_HOME}/lib/{TAG}")
    assert rt.env == {"PYTHONHOME": PYTHON_HOME}
    assert python_argv()[-1] == f"{PYTHON_HOME}/bin/{TAG}"

    # Outside a sandbox: the bundle's loader, libraries and binary, the host's stdlib, and
    # the agent's packages: it imports Crucible's worker and sees no LD_* variable.
    argv = python_argv(home=str(rt.bundle))
    code = (
        "import os, sys; sys.path.extend(os.environ['P'].split(':')); "
        "import crucible.worker.pod; "
        "print(sorted(k for k in os.environ if k.startswith('LD_')), sys.version_info[:2])"
    )
    env = {
        "PYTHONHOME": sys.base_prefix,
        "P": ":".join(host_python_paths()),
        "PATH": "/usr/bin:/bin",
    }
    run = subprocess.run(
        [*argv, "-P", "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"[] {tuple(sys.version_info[:2])}", run.stdout


def test_a_bundle_is_rebuilt_when_a_file_changes(tmp_path: Path) -> None:
    src = tmp_path / "prog"
    src.write_bytes(b"one")
    first = build_bundle(tmp_path / "b", {"bin/prog": str(src)}, dirs=["mnt/x"])
    assert (first / "bin" / "prog").read_bytes() == b"one" and (first / "mnt" / "x").is_dir()
    assert build_bundle(tmp_path / "b", {"bin/prog": str(src)}, dirs=["mnt/x"]) == first
    src.write_bytes(b"two!")
    second = build_bundle(tmp_path / "b", {"bin/prog": str(src)}, dirs=["mnt/x"])
    assert second != first and (second / "bin" / "prog").read_bytes() == b"two!"
    assert run_prefix("/x", "libs") == ["/x/ld.so", "--inhibit-cache", "--library-path", "/x/libs"]
