"""Secrets: named key/values of an account, encrypted at rest, injected into the account's
containers as environment variables. Values travel only in :class:`SecretCreate` (from the
owner) and :class:`SecretValues` (to the owner's running containers)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from crucible.protocol.common import Named, Wire, WireInt

__all__ = ["AppSecretCreate", "SecretCreate", "SecretInfo", "SecretValues", "check_env_key"]

MAX_SECRET_KEYS = 100
MAX_SECRET_BYTES = 64 * 1024  # all values of one secret together
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def check_env_key(key: str) -> str:
    if not _ENV_KEY.match(key):
        raise ValueError(
            f"secret key {key[:40]!r} is not a valid environment variable name "
            "(letters, digits and _, not starting with a digit, at most 128 characters)"
        )
    if key.startswith("CRUCIBLE_"):
        raise ValueError(f"secret key {key!r} uses the reserved prefix CRUCIBLE_")
    return key


class AppSecretCreate(Wire):
    """Values for a secret that lives as long as one app (``crucible.Secret.from_dict``)."""

    values: dict[str, str] = Field(min_length=1, max_length=MAX_SECRET_KEYS)

    @field_validator("values")
    @classmethod
    def _keys(cls, values: dict[str, str]) -> dict[str, str]:
        for key in values:
            check_env_key(key)
        if sum(len(k) + len(v.encode()) for k, v in values.items()) > MAX_SECRET_BYTES:
            raise ValueError(f"a secret holds at most {MAX_SECRET_BYTES} bytes of keys and values")
        if any("\x00" in v for v in values.values()):
            raise ValueError("secret values cannot contain NUL characters")
        return values


class SecretCreate(Named, AppSecretCreate):
    """Create the secret ``name``, or replace its values (``overwrite``)."""

    overwrite: bool = False


class SecretInfo(Wire):
    """What anyone may see of a secret: its name and keys, never its values."""

    name: str
    keys: list[str]
    created_ms: WireInt
    updated_ms: WireInt
    # The running apps' functions that name it, as "APP/FUNCTION" (GET of one secret only):
    # their new containers would start without it, were it deleted.
    used_by: list[str] = Field(default_factory=list)


class SecretValues(Wire):
    """The environment a running container of the owner gets from its function's secrets."""

    env: dict[str, str] = Field(default_factory=dict)
