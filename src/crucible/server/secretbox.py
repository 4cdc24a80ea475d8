"""Encryption at rest for secrets: AES-256-GCM under a keyring the operator controls.

The keyring is a list of 32-byte keys. The first seals new values; every key opens what it
sealed, so rotation is: put a new key first (keep the old ones after it), restart, run
``crucible secret rotate`` (re-seals every secret with the first key), then drop the old keys.
A sealed value names its key by a short fingerprint, and binds the secret's account and name
as associated data, so a ciphertext moved to another row does not open.

Keys come from the ``secrets_keys`` setting (base64, comma-separated) or, when it is empty,
from ``$CRUCIBLE_HOME/secrets.key`` (one base64 key per line), created with one fresh key
(mode 0600) the first time a server starts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crucible.errors import Error
from crucible.settings import Settings

__all__ = ["SecretBox", "load_secret_box"]

_NONCE_BYTES = 12


def _fingerprint(key: bytes) -> str:
    return hashlib.sha256(b"crucible-secretbox" + key).hexdigest()[:16]


class SecretBox:
    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise Error("the secrets keyring is empty")
        for key in keys:
            if len(key) != 32:
                raise Error("each secrets key must be 32 bytes (base64 of 32 random bytes)")
        self._keys = {_fingerprint(k): AESGCM(k) for k in keys}
        self.current = _fingerprint(keys[0])
        self.key_ids = tuple(self._keys)  # every key it opens, the current one first

    def seal(self, plaintext: bytes, context: str) -> tuple[str, bytes]:
        """Encrypt with the current key: (key id, nonce + ciphertext)."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._keys[self.current].encrypt(nonce, plaintext, context.encode())
        return self.current, nonce + sealed

    def open(self, key_id: str, sealed: bytes, context: str) -> bytes:
        aead = self._keys.get(key_id)
        if aead is None:
            raise Error(
                f"a secret is sealed with key {key_id}, which is not in the keyring; add the old "
                "key back after the current one (CRUCIBLE_SECRETS_KEYS) and run `crucible secret "
                "rotate`"
            )
        try:
            return aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], context.encode())
        except InvalidTag:
            raise Error("a secret failed its integrity check (tampered or moved)") from None


def _decode(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Error(f"{where}: a secrets key is not valid base64") from None


def load_secret_box(settings: Settings) -> SecretBox:
    if settings.secrets_keys.strip():
        keys = [
            _decode(k, "CRUCIBLE_SECRETS_KEYS")
            for k in settings.secrets_keys.split(",")
            if k.strip()
        ]
        return SecretBox(keys)
    path: Path = settings.home_path / "secrets.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(os.urandom(32)).decode() + "\n")
        try:
            os.link(tmp, path)  # another process that won the race keeps its key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return SecretBox([_decode(line, str(path)) for line in lines])
