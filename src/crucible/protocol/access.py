"""Access to running containers: exec, TCP tunnels and SSH, relayed by the control plane.

Hosts only dial out, so every session has two WebSockets that the server splices together:

1. the client opens ``/v1/containers/{id}/access`` (its account's token) and sends one text
   message, an :class:`AccessOpen`;
2. the server hands an :class:`AccessRequest` to the container's agent in its next sync reply
   (the sync long poll is woken at once), and the agent dials
   ``/v1/hosts/{host}/access/{session}`` back with its host token;
3. from then on the server forwards every message both ways, one at a time (a slow reader
   slows the writer: nothing piles up in the server).

Messages on a spliced session:

- binary: one channel byte, then data. ``0`` goes to the container (stdin, or the TCP stream),
  ``1`` comes from it (stdout, the TCP stream), ``2`` is stderr;
- text: a JSON control message: ``{"type": "ready"}`` (the agent has the process or
  connection), ``{"type": "eof"}`` (no more stdin), ``{"type": "resize", "rows", "cols"}``,
  ``{"type": "exit", "code"}`` (the process ended; the last message), ``{"type": "error",
  "code", "message"}`` (a stable error code from :mod:`crucible.errors`; the last message).
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Literal

from pydantic import Field, field_validator

from crucible.protocol.common import PrintableText, Wire, WireInt

__all__ = [
    "CHANNEL_ERR",
    "CHANNEL_IN",
    "CHANNEL_OUT",
    "AccessKind",
    "AccessOpen",
    "AccessRequest",
    "SshKeyCreate",
    "SshKeyInfo",
    "fingerprint",
    "parse_public_key",
    "websocket_url",
]

CHANNEL_IN = 0
CHANNEL_OUT = 1
CHANNEL_ERR = 2

AccessKind = Literal["exec", "tcp", "ssh"]

# A login name the SSH server accepts as the container's user (OpenSSH sends the local one).
_LOGIN = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


class AccessOpen(Wire):
    """The client's first message on ``/v1/containers/{id}/access``."""

    kind: AccessKind
    argv: list[str] = Field(default_factory=list, max_length=4096)  # exec: the command
    tty: bool = False  # exec: a terminal (pty) instead of pipes
    rows: int = Field(default=24, ge=1, le=10_000)
    cols: int = Field(default=80, ge=1, le=10_000)
    term: str = Field(default="xterm-256color", max_length=64, pattern=r"^[A-Za-z0-9_.+-]+$")
    port: int | None = Field(default=None, ge=1, le=65535)  # tcp: the port inside
    user: str = Field(default="crucible", max_length=32)  # ssh: the login name OpenSSH sends

    @field_validator("argv")
    @classmethod
    def _argv(cls, v: list[str]) -> list[str]:
        if any("\x00" in a for a in v):
            raise ValueError("a command argument holds a NUL byte")
        if sum(len(a) for a in v) > 128 * 1024:
            raise ValueError("the command is longer than 128 KiB")
        return v

    @field_validator("user")
    @classmethod
    def _user(cls, v: str) -> str:
        if not _LOGIN.match(v):
            return "crucible"  # any other login name maps to the container's one user
        return v


class AccessRequest(Wire):
    """What the server asks an agent to do for one session (in :class:`HostSyncReply`)."""

    session_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    container_id: str = Field(min_length=1, max_length=64)
    open: AccessOpen
    # ssh: the account's public keys, one OpenSSH line each (public keys, not secrets).
    ssh_keys: list[str] = Field(default_factory=list, max_length=256)
    # Where to dial back: the URL of the replica that holds the client's side (its
    # CRUCIBLE_ADVERTISE_URL). None: the agent's own server URL.
    dial_url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://")


class SshKeyCreate(Wire):
    """``POST /v1/ssh-keys``: one OpenSSH public key line (``ssh-ed25519 AAAA... comment``)."""

    public_key: str = Field(min_length=1, max_length=16_384)
    name: PrintableText = Field(default="", max_length=64)


class SshKeyInfo(Wire):
    id: str
    name: str
    type: str
    fingerprint: str  # SHA256:... as ssh-keygen -l prints it
    public_key: str
    created_ms: WireInt


def parse_public_key(line: str) -> tuple[str, str, str]:
    """``(type, base64 blob, comment)`` of one OpenSSH public key line; raises ValueError
    naming what is wrong (a private key, an unknown type, a damaged blob)."""
    text = line.strip()
    if "PRIVATE KEY" in text:
        raise ValueError(
            "this is a PRIVATE key: never share it; add the .pub file next to it "
            "(e.g. ~/.ssh/id_ed25519.pub)"
        )
    if "\n" in text or "\r" in text:
        raise ValueError("give one public key (one line), not several")
    parts = text.split(None, 2)
    if len(parts) < 2:
        raise ValueError(
            "not an OpenSSH public key: expected 'TYPE BASE64 [comment]', "
            "e.g. the content of ~/.ssh/id_ed25519.pub"
        )
    kind, blob = parts[0], parts[1]
    comment = parts[2] if len(parts) > 2 else ""
    if kind not in _KEY_TYPES:
        raise ValueError(
            f"unsupported key type {kind[:40]!r}: use one of {', '.join(_KEY_TYPES)} "
            "(ssh-keygen -t ed25519 makes one)"
        )
    try:
        raw = base64.b64decode(blob, validate=True)
    except ValueError as exc:
        raise ValueError("the key's base64 part is damaged (copy the whole line again)") from exc
    # The blob starts with its own type as an SSH string: a key pasted under another type's
    # name, or cut short, is refused here rather than by the SSH server later.
    if len(raw) < 4 or raw[4 : 4 + int.from_bytes(raw[:4], "big")] != kind.encode():
        raise ValueError(
            f"the key's data does not match its type {kind!r} (a truncated or edited key?)"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in comment):
        raise ValueError("the key's comment holds control characters (terminal escapes?)")
    return kind, blob, comment


def fingerprint(blob: str) -> str:
    """``SHA256:...``, the fingerprint ``ssh-keygen -l`` prints for a key's base64 blob."""
    digest = hashlib.sha256(base64.b64decode(blob)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def websocket_url(server_url: str, path: str) -> str:
    """``ws://`` (or ``wss://`` for https) + the server's address + ``path``. Of a list of
    replicas' URLs (comma-separated), the first."""
    base = server_url.split(",")[0].strip().rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + path
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :] + path
    raise ValueError(f"not an http(s) URL: {server_url!r}")
