"""Tokens and principals.

API tokens (``cru_...``) are stored as sha256 hashes with a scope. Container tokens
(``ctr_<container_id>.<hmac>``) are not stored: the server signs each container's id with its
secret, so the agent can be handed a token again after a lost reply and every replica can
verify one without a database read.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from crucible.protocol.accounts import Scope

__all__ = [
    "AuthCache",
    "Principal",
    "container_token",
    "hash_token",
    "new_api_token",
    "verify_container_token",
]


@dataclass(frozen=True)
class Principal:
    account_id: str
    scope: str  # admin | user | host | container
    token_id: str | None = None
    container_id: str | None = None
    # A container token's app (the app its function belongs to), read by the routes a
    # container may call its app's functions through (api/deps.call_maker); None otherwise.
    app_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.scope == Scope.ADMIN


@dataclass
class AuthCache:
    """What authentication remembers in this process (services/accounts.py authenticate),
    written and read by every request's authentication on any replica. ``container_accounts``
    never goes stale (containers never change account; a miss reads the store);
    ``token_cache`` is stale for at most its TTL (5 s) anywhere: a revoked token stops
    working within it, and at once on the replica that revoked it."""

    # account of each container ever verified: containers never change account.
    container_accounts: dict[str, str] = field(default_factory=dict)
    # token hash -> (principal tuple, expiry monotonic); short TTL so revocation bites fast.
    token_cache: dict[str, tuple[tuple[str, str, str], float]] = field(default_factory=dict)


def new_api_token() -> str:
    return "cru_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def container_token(secret: str, container_id: str) -> str:
    mac = hmac.new(secret.encode(), container_id.encode(), hashlib.sha256).hexdigest()[:40]
    return f"ctr_{container_id}.{mac}"


def verify_container_token(secret: str, token: str) -> str | None:
    """The container id a container token names, or None when the signature is wrong."""
    body = token[4:]
    container_id, _, _mac = body.rpartition(".")
    if not container_id:
        return None
    expected = container_token(secret, container_id)
    return container_id if hmac.compare_digest(expected, token) else None
