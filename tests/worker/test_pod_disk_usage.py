"""What a pod's disk holds, as its supervisor measures it against ``--disk``: data a pod hid
from a plain walk counts too, a directory made unreadable (``chmod 000``) and a file deleted
while a process of the pod still holds it open (both let a 64 MiB pod keep 500 MiB)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from crucible.worker.pod import disk_usage_bytes

MIB = 1 << 20


def _write(path: Path, mib: int) -> None:
    with open(path, "wb") as f:
        f.write(os.urandom(MIB) * mib)  # real blocks, not a sparse file


def _hide_and_measure(root: Path) -> int:
    hidden = root / "hidden"
    hidden.mkdir()
    _write(hidden / "data", 4)
    hidden.chmod(0o000)
    return disk_usage_bytes(root)


def test_an_unreadable_directory_still_counts() -> None:
    """As a user that chmod 000 really stops (root reads through it): the pod's own, in a
    forked child when the tests run as root."""
    root = Path(tempfile.mkdtemp(prefix="crucible-disk-"))
    try:
        if os.getuid() != 0:
            assert _hide_and_measure(root) >= 4 * MIB
            return
        os.chown(root, 65534, 65534)  # nobody's
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: nobody, measuring
            try:
                os.close(read)
                os.setgid(65534)
                os.setuid(65534)
                os.write(write, str(_hide_and_measure(root)).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as f:
            got = f.read()
        os.waitpid(pid, 0)
        assert got and int(got) >= 4 * MIB, got
    finally:
        for path in (root / "hidden", root):
            with contextlib.suppress(OSError):
                path.chmod(0o700)
        shutil.rmtree(root, ignore_errors=True)


def test_a_file_deleted_while_open_counts_until_closed(tmp_path: Path) -> None:
    held = tmp_path / "held"
    _write(held, 4)
    # A process of this session holds it open, then it is deleted.
    holder = subprocess.Popen(
        [sys.executable, "-c", f"f = open({str(held)!r}, 'rb'); import time; time.sleep(60)"]
    )
    try:
        deadline = time.monotonic() + 10
        opened = False
        while not opened and time.monotonic() < deadline:
            fds = Path(f"/proc/{holder.pid}/fd")
            opened = any(os.readlink(fd) == str(held) for fd in fds.iterdir())
            time.sleep(0.02)
        held.unlink()
        assert disk_usage_bytes(tmp_path) < MIB  # a plain walk no longer sees it
        assert disk_usage_bytes(tmp_path, open_in_session=os.getsid(0)) >= 4 * MIB
        # Another session's open files are not the pod's.
        assert disk_usage_bytes(tmp_path, open_in_session=os.getsid(0) + 999_999) < MIB
    finally:
        holder.kill()
        holder.wait()
    assert disk_usage_bytes(tmp_path, open_in_session=os.getsid(0)) < MIB  # closed: freed
