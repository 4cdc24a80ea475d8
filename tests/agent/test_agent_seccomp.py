"""The hand-assembled seccomp filter, loaded by a real bwrap: blocked calls fail with EPERM,
ordinary process and thread creation still work."""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest

from crucible.agent import seccomp
from crucible.agent.sandbox import check_bwrap, python_mounts
from crucible.errors import SandboxUnavailableError

PROBE = r"""
import ctypes, errno, os, threading
libc = ctypes.CDLL(None, use_errno=True)
def rc(value):
    return "ok" if value == 0 else errno.errorcode[ctypes.get_errno()]
print("unshare-user", rc(libc.unshare(0x10000000)))
print("unshare-net", rc(libc.unshare(0x40000000)))
print("unshare-files", rc(libc.unshare(0x400)))
print("mount", rc(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)))
print("ptrace", rc(libc.ptrace(16, 1, None, None)))
pid = os.fork()
if pid == 0:
    os._exit(0)
print("fork", "ok" if os.waitpid(pid, 0)[1] == 0 else "failed")
t = threading.Thread(target=lambda: None); t.start(); t.join()
print("thread", "ok")
"""


def test_program_is_well_formed() -> None:
    prog = seccomp.filter_program()
    assert len(prog) % 8 == 0 and len(prog) // 8 < 4096  # the kernel's BPF_MAXINSNS
    first = struct.unpack("=HBBI", prog[:8])
    assert first == (0x20, 0, 0, 4)  # it starts by loading the architecture
    for arch in ("x86_64", "aarch64"):
        assert set(seccomp.BLOCKED_SYSCALLS[arch]) >= {
            "mount", "umount2", "pivot_root", "ptrace", "bpf", "keyctl", "add_key",
            "request_key", "perf_event_open", "setns",
        }  # fmt: skip


def test_filter_blocks_namespaces_mount_ptrace_but_not_fork(tmp_path: object) -> None:
    try:
        bwrap = check_bwrap()
    except SandboxUnavailableError as exc:
        pytest.skip(str(exc))
    r, w = os.pipe()
    os.write(w, seccomp.filter_program())
    os.close(w)
    cmd = [bwrap, "--unshare-all", "--die-with-parent", "--cap-drop", "ALL"]
    cmd += ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    # A checkout under /tmp (CI's fresh clone may be one) keeps its interpreter visible.
    for path in python_mounts(sys.executable):
        cmd += ["--ro-bind", path, path]
    cmd += ["--seccomp", str(r), sys.executable, "-c", PROBE]
    try:
        out = subprocess.run(cmd, pass_fds=(r,), capture_output=True, text=True, check=True)
    finally:
        os.close(r)
    seen = dict(line.split() for line in out.stdout.splitlines())
    assert seen == {
        "unshare-user": "EPERM",
        "unshare-net": "EPERM",
        "unshare-files": "ok",  # not a namespace: allowed
        "mount": "EPERM",
        "ptrace": "EPERM",
        "fork": "ok",
        "thread": "ok",
    }
