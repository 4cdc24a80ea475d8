"""Accounts and API tokens."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from crucible.protocol.common import PrintableText, Wire, WireInt

__all__ = [
    "AccountCreate",
    "AccountInfo",
    "AccountUpdate",
    "Scope",
    "TokenCreate",
    "TokenCreated",
    "TokenInfo",
]


class Scope(StrEnum):
    """What a token may do. ``admin``: operate the exchange (accounts, credits, every host).
    ``user``: a builder's own apps and calls. ``host``: an agent of the account's hosts.
    Container tokens are not stored: the server signs them per container."""

    ADMIN = "admin"
    USER = "user"
    HOST = "host"


class AccountCreate(Wire):
    # It is a path segment of the account's web URLs (/web/NAME/...): it starts with a letter
    # or a digit, so "." and ".." (which clients fold into the path) are not names.
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class AccountInfo(Wire):
    id: str
    name: str
    created_ms: WireInt
    # Approved by the operator to run other accounts' work on its (fully isolated) hosts;
    # the hosts of an account that is not run their owner's code only.
    provider: bool = False


class AccountUpdate(Wire):
    """What an admin changes of an account (``PATCH /v1/accounts/{account}``)."""

    provider: bool = Field(
        description="may its fully isolated hosts run other accounts' work (a provider)"
    )


class TokenCreate(Wire):
    scope: Scope = Field(default=Scope.USER, strict=False)  # its value, from JSON
    name: PrintableText = Field(default="", max_length=64)
    account_id: str | None = Field(
        default=None,
        max_length=64,
        description="admin only: create the token for this account (its id or its name)",
    )


class TokenInfo(Wire):
    id: str
    account_id: str
    scope: Scope = Field(strict=False)
    name: str
    created_ms: WireInt
    revoked: bool


class TokenCreated(TokenInfo):
    token: str = Field(description="the secret; shown once, stored only as a hash")
