"""Functions that try the network from a sandbox: one per ``network=`` ask.

Each returns, per ``"host:port"`` it was given, ``"connected:<banner>"`` when a TCP connection
was made (and what the server sent), else the errno's name. The targets live in network
namespaces the test builds (tests/sandbox/test_egress.py): nothing leaves the machine.
"""

from __future__ import annotations

import errno
import socket

import crucible

app = crucible.App("egress")

ALLOWED = "198.51.100.2:8080"


def _try(targets: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for target in targets:
        host, _, port = target.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=3) as s:
                s.settimeout(3)
                try:
                    banner = s.recv(64).decode("ascii", "replace").strip()
                except OSError:
                    banner = ""
                out[target] = f"connected:{banner}"
        except OSError as exc:
            out[target] = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return out


@app.function(network=[ALLOWED], timeout=60)
def allowlisted(targets: list[str]) -> dict[str, str]:
    return _try(targets)


@app.function(network=True, timeout=60)
def public(targets: list[str]) -> dict[str, str]:
    return _try(targets)


@app.function(timeout=60)
def offline(targets: list[str]) -> dict[str, str]:
    return _try(targets)


owners = crucible.App("egress-owner")  # run by the host owner's account


@owners.function(network=[ALLOWED], timeout=60)
def owner_allowlisted(targets: list[str]) -> dict[str, str]:
    return _try(targets)
