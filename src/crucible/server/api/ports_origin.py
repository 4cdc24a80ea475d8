"""The origin of a pod's published port with ``CRUCIBLE_PORTS_DOMAIN`` set:
``{pod_id}-{port}.{domain}`` (api/ports_host.py serves it), and reading a request's host
back into a pod and port."""

from __future__ import annotations

import re

from starlette.requests import HTTPConnection
from starlette.types import Scope

from crucible.errors import SettingError

__all__ = [
    "check_domain",
    "host_label",
    "host_origin",
    "hostname_of",
    "origin_of",
    "ports_target",
]

_LABEL = re.compile(r"^([a-z0-9][a-z0-9-]*)-([0-9]{1,5})$")
_PART = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"^(?=.{{1,200}}$)({_PART}\.)*{_PART}$")


def check_domain(domain: str) -> str:
    """``CRUCIBLE_PORTS_DOMAIN`` normalised (lower case, no leading dot or trailing dot);
    SettingError (a ValueError) naming the problem when it is not a DNS name."""
    name = domain.strip().lower().strip(".")
    if not _DOMAIN.match(name):
        raise SettingError(
            f"CRUCIBLE_PORTS_DOMAIN={domain!r} is not a DNS name: set it to a domain whose "
            "subdomains resolve to this exchange (ports.example.com, or ports.localhost on a "
            "laptop), or leave it empty"
        )
    return name


def hostname_of(scope: Scope) -> str:
    """The request's host name (``Host`` without its port, lower case); ``""`` without one."""
    for name, value in scope.get("headers") or ():
        if name == b"host":
            host = str(value.decode("latin-1")).strip().lower()
            if host.startswith("["):  # an IPv6 literal is never a ports host
                return host
            return host.rsplit(":", 1)[0].rstrip(".")
    return ""


def host_label(hostname: str, domain: str) -> str | None:
    """The first label of a host under the domain (``pd-x-8888`` of
    ``pd-x-8888.ports.localhost``); None for the domain itself or any other host."""
    if not hostname.endswith("." + domain):
        return None
    return hostname[: -len(domain) - 1]


def ports_target(hostname: str, domain: str) -> tuple[str, int] | bool | None:
    """For a request's host name: ``(pod_id, port)`` on a ports host, ``True`` for a host
    under the domain that names no port (the domain itself, a malformed label), ``None``
    for any other host (the exchange's)."""
    if hostname == domain:
        return True
    if not hostname.endswith("." + domain):
        return None
    label = hostname[: -len(domain) - 1]
    m = _LABEL.match(label)
    if m is None or "." in label:
        return True
    port = int(m.group(2))
    return (m.group(1), port) if 1 <= port <= 65535 else True


def host_origin(request: HTTPConnection, domain: str, pod_id: str, port: int) -> str:
    """The origin of a pod's port on its own host, with the scheme and port the client used
    to reach the exchange (``http://pd-...-8888.ports.localhost:8745``)."""
    return origin_of(request, domain, f"{pod_id}-{port}")


def origin_of(request: HTTPConnection, domain: str, label: str) -> str:
    """The origin of the user-content host ``{label}.{domain}``, with the scheme and port
    the client used to reach the exchange."""
    scheme = "https" if request.url.scheme in ("https", "wss") else "http"
    at = request.url.port
    return f"{scheme}://{label}.{domain}" + (f":{at}" if at else "")
