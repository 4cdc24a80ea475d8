"""Helpers of the access tests (exec, tunnels, SSH) shared by the process-runtime suite
(tests/e2e/test_access_e2e.py) and the sandbox suite (tests/sandbox/test_access_sandbox.py)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import app_access

from crucible.sdk import _tunnels
from crucible.testing import wait_for

from harness import Exchange


@contextmanager
def running_container(
    client: Any,
    seconds: float = 120,
    echo_port: int = 0,
    *,
    other: bool = False,
    http_port: int = 0,
) -> Iterator[str]:
    """A running container of ``client``'s account (app_access.hold), by id; ``other``: of
    the second app (while the first is held by another fixture)."""
    app, fn = (
        (app_access.other, app_access.hold_other)
        if other
        else (
            app_access.app,
            app_access.hold,
        )
    )
    with app.run(client=client):
        call = (
            fn.spawn(seconds, echo_port, http_port) if http_port else fn.spawn(seconds, echo_port)
        )

        def container() -> str | None:
            info = client.transport.get(f"/v1/calls/{call.object_id}/timeline")
            return info["container_id"] if info["state"] == "running" else None

        cid = wait_for(container, timeout_s=60, what="the container to run")
        yield cid
        client.transport.post(f"/v1/calls/{call.object_id}/cancel", {})


def run_exec(
    exchange: Exchange, token: str, cid: str, argv: list[str], stdin: bytes | None = None
) -> tuple[int, bytes, bytes]:
    out, err = io.BytesIO(), io.BytesIO()
    stdin_file = None
    if stdin is not None:
        stdin_file = tempfile.TemporaryFile()  # noqa: SIM115 (closed below)
        stdin_file.write(stdin)
        stdin_file.seek(0)
    try:
        code = _tunnels.exec_command(
            exchange.url, token, cid, argv, stdin=stdin_file, stdout=out, stderr=err
        )
    finally:
        if stdin_file is not None:
            stdin_file.close()
    return code, out.getvalue(), err.getvalue()


def ssh_env(exchange: Exchange, token: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    env.update(CRUCIBLE_HOME=str(home), CRUCIBLE_SERVER_URL=exchange.url, CRUCIBLE_TOKEN=token)
    return env


def make_key(directory: Path, name: str) -> Path:
    key = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True
    )
    return key


def ssh_argv(key: Path, known_hosts: Path) -> list[str]:
    """OpenSSH options a user would put in ~/.ssh/config: ProxyCommand through the CLI."""
    proxy = f"{sys.executable} -m crucible.cli.main container proxy %h"
    return [
        "-o", f"ProxyCommand={proxy}",
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes",
        "-o", "LogLevel=ERROR",
        "-i", str(key),
    ]  # fmt: skip


_NSS_WRAPPER = "/usr/lib/libnss_wrapper.so"


def ssh_available() -> bool:
    """Whether this machine has what SSH sessions need (scripts/setup dev installs it)."""
    import glob

    return (
        all(shutil.which(c) for c in ("ssh", "scp", "ssh-keygen"))
        and any(os.path.exists(p) for p in ("/usr/sbin/dropbear", "/usr/bin/dropbear"))
        and bool(
            glob.glob("/usr/lib/*/libnss_wrapper.so") + glob.glob("/usr/lib/libnss_wrapper.so")
        )
    )


NEEDS_SSH = "needs dropbear-bin, libnss-wrapper and the OpenSSH client (scripts/setup dev)"
