"""The host's own address, as its cluster members are told it (docs/pods.md, clusters).

An agent only dials out, so the control plane cannot see where other hosts reach this one.
The agent announces the address of the interface its traffic to the control plane leaves
by (a UDP socket "connected" to the server: no packet is sent): on one machine that is the
loopback address, across machines the address on the network shared with the control
plane, which is where the other members are too.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

__all__ = ["own_address"]


def own_address(server_url: str) -> str | None:
    """The local address used to reach ``server_url``; None when it cannot be told."""
    try:
        parts = urlsplit(server_url)
        host = parts.hostname
        if not host:
            return None
        port = parts.port or (443 if parts.scheme == "https" else 80)
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            local = s.getsockname()[0]
    except (OSError, ValueError, IndexError):
        return None
    return str(local)
