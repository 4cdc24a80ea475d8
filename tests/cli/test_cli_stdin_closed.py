"""A closed standard input (cron, systemd units, `cmd <&-`) reads as empty: `crucible
container exec -i` and `container proxy` raised AttributeError on `sys.stdin` being None."""

from __future__ import annotations

import subprocess
import sys

PROBE = (
    "import sys\n"
    "from crucible.cli.main import _stdin_or_empty\n"
    "_stdin_or_empty()\n"
    "extra = open(__import__('os').devnull)\n"  # a file opened later does not become stdin
    "print(repr(sys.stdin.read()), sys.stdin.fileno(), extra.fileno() != 0)\n"
)


def test_a_closed_stdin_reads_as_empty() -> None:
    out = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" -c "$PROBE" <&-'],
        env={"PROBE": PROBE, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["''", "0", "True"], out.stdout
