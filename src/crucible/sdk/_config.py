"""Where the SDK and CLI find their exchange: settings first, then ``client.json``."""

from __future__ import annotations

import json
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from crucible.errors import Error
from crucible.settings import Settings

__all__ = ["ClientConfig", "client_config_path", "read_client_config", "write_client_config"]


@dataclass(frozen=True)
class ClientConfig:
    server_url: str
    token: str


def client_config_path(settings: Settings) -> Path:
    return settings.home_path / "client.json"


def read_client_config(settings: Settings) -> ClientConfig | None:
    """The configured exchange, or None when neither settings nor client.json name one."""
    url, token = settings.server_url, settings.token
    path = client_config_path(settings)
    if (not url or not token) and path.exists():
        saved_url, saved_token = _read_saved(path)
        url = url or saved_url
        # The saved token belongs to the saved server: it is never sent to another URL (one
        # set in CRUCIBLE_SERVER_URL without CRUCIBLE_TOKEN would have received it).
        if not token and _same_server(url, saved_url):
            token = saved_token
    if not url or not token:
        return None
    return ClientConfig(url, token)


_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def _same_server(a: str, b: str) -> bool:
    """Whether two URLs name one server (``localhost`` and ``127.0.0.1`` alike)."""

    def key(url: str) -> tuple[str, str, int | None, str]:
        parts = urllib.parse.urlsplit(url.strip())
        host = (parts.hostname or "").lower()
        try:
            port = parts.port
        except ValueError:
            port = None
        return (
            parts.scheme.lower(),
            "loopback" if host in _LOOPBACK else host,
            port,
            parts.path.rstrip("/"),
        )

    return key(a) == key(b)


def _read_saved(path: Path) -> tuple[str, str]:
    """(server URL, token) of a client.json; an error naming the file when it is not one
    (cut short by a full disk, edited by hand)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        data, why = None, str(exc)
    else:
        why = 'it must be {"server_url": "...", "token": "..."}'
    if (
        isinstance(data, dict)
        and isinstance(data.get("server_url", ""), str)
        and isinstance(data.get("token", ""), str)
    ):
        return data.get("server_url", ""), data.get("token", "")
    raise Error(
        f"cannot read {path} ({why}): fix it, or delete it (`crucible up` writes a new one; "
        "CRUCIBLE_SERVER_URL and CRUCIBLE_TOKEN can stand in for it)"
    )


def write_client_config(settings: Settings, config: ClientConfig) -> Path:
    path = client_config_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"server_url": config.server_url, "token": config.token}, indent=2))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path
