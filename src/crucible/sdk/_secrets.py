"""``crucible.Secret``: named key/values injected as environment variables into a function's
containers. The values never enter the function spec, the image or the call records."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from crucible.errors import InvalidRequestError
from crucible.protocol.secrets import MAX_SECRET_KEYS, SecretInfo, check_env_key
from crucible.protocol.transport import url_part
from crucible.sdk._checks import check_object_name
from crucible.sdk._client import Client
from crucible.sdk._local_files import read_text_file

__all__ = ["Secret", "parse_dotenv"]


def _check_values(values: Mapping[str, str], where: str) -> dict[str, str]:
    if not isinstance(values, Mapping) or not values:
        raise InvalidRequestError(f"{where} needs a non-empty dict of KEY: value strings")
    if len(values) > MAX_SECRET_KEYS:
        raise InvalidRequestError(f"{where}: a secret holds at most {MAX_SECRET_KEYS} keys")
    out: dict[str, str] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidRequestError(f"{where}: keys and values must be strings")
        try:
            check_env_key(key)
        except ValueError as exc:
            raise InvalidRequestError(f"{where}: {exc}") from None
        out[key] = value
    return out


_DOTENV_MAX_BYTES = 1 << 20  # a secret holds at most 64 KiB per value, 256 keys


def parse_dotenv(path: str | Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file (``export`` allowed, # comments, optional quotes)."""
    values: dict[str, str] = {}
    text = read_text_file(path, "the .env file", _DOTENV_MAX_BYTES)
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].strip()
        key, sep, value = line.partition("=")
        if not sep:
            raise InvalidRequestError(f"{path}:{n}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


class Secret:
    """A reference to secret values for ``@app.function(secrets=[...])``.

    ``Secret.from_name("hf")`` names a secret of your account (``crucible secret create hf
    HF_TOKEN=...``); the function's registration fails if it does not exist.
    ``Secret.from_dict({...})`` (development) sends the values once when the app starts; they
    are kept encrypted for as long as that app runs.
    """

    def __init__(self, *, name: str | None = None, values: dict[str, str] | None = None) -> None:
        self.name = name
        self._values = values

    def __repr__(self) -> str:
        if self.name is not None:
            return f"Secret.from_name({self.name!r})"
        keys = sorted(self._values or {})
        return f"Secret.from_dict(keys={keys})"  # never the values

    @classmethod
    def from_name(cls, name: str) -> Secret:
        return cls(name=check_object_name("secret", name))

    @classmethod
    def from_dict(cls, values: Mapping[str, str]) -> Secret:
        return cls(values=_check_values(values, "Secret.from_dict"))

    @classmethod
    def from_dotenv(cls, path: str | Path = ".env") -> Secret:
        return cls(values=_check_values(parse_dotenv(path), f"Secret.from_dotenv({str(path)!r})"))

    @staticmethod
    def create(
        name: str,
        values: Mapping[str, str],
        *,
        overwrite: bool = False,
        client: Client | None = None,
    ) -> SecretInfo:
        """Store a named secret (``overwrite`` replaces the values of an existing one)."""
        Secret.from_name(name)
        body = {
            "name": name,
            "values": _check_values(values, "Secret.create"),
            "overwrite": overwrite,
        }
        client = client or Client.from_settings()
        return SecretInfo.model_validate(client.post("/v1/secrets", body))

    @staticmethod
    def delete(name: str, *, client: Client | None = None) -> None:
        client = client or Client.from_settings()
        client.transport.request("DELETE", f"/v1/secrets/{url_part(name)}")

    def _resolve(self, client: Client, app_id: str) -> str:
        """The stored name functions reference (a from_dict secret is stored now, for
        ``app_id``)."""
        if self.name is not None:
            return self.name
        info = SecretInfo.model_validate(
            client.post(f"/v1/apps/{app_id}/secrets", {"values": self._values})
        )
        return info.name
