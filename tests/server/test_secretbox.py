"""Encryption at rest of secrets: sealing, binding to the row, rotation, key files."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from crucible.errors import Error
from crucible.server.secretbox import SecretBox, load_secret_box
from crucible.settings import load_settings


def key() -> bytes:
    return os.urandom(32)


def test_seal_and_open_round_trip_bound_to_context() -> None:
    box = SecretBox([key()])
    key_id, sealed = box.seal(b"hunter2", "secret:acct/hf")
    assert b"hunter2" not in sealed
    assert box.open(key_id, sealed, "secret:acct/hf") == b"hunter2"
    with pytest.raises(Error, match="integrity"):
        box.open(key_id, sealed, "secret:other/hf")  # moved to another account's row
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(Error, match="integrity"):
        box.open(key_id, tampered, "secret:acct/hf")


def test_rotation_new_key_first_old_keys_still_open() -> None:
    old, new = key(), key()
    key_id, sealed = SecretBox([old]).seal(b"v", "c")
    rotated = SecretBox([new, old])
    assert rotated.current != key_id
    assert rotated.open(key_id, sealed, "c") == b"v"
    with pytest.raises(Error, match="not in the keyring"):
        SecretBox([new]).open(key_id, sealed, "c")


def test_keys_from_settings_and_from_a_generated_file(tmp_path: Path) -> None:
    k = key()
    box = load_secret_box(
        load_settings(environ={}, home=str(tmp_path), secrets_keys=base64.b64encode(k).decode())
    )
    assert box.open(*box.seal(b"x", "c"), "c") == b"x"
    assert not (tmp_path / "secrets.key").exists()

    generated = load_secret_box(load_settings(environ={}, home=str(tmp_path)))
    path = tmp_path / "secrets.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_secret_box(load_settings(environ={}, home=str(tmp_path)))
    assert again.current == generated.current  # the same key on every start

    with pytest.raises(Error, match="32 bytes"):
        load_secret_box(load_settings(environ={}, home=str(tmp_path), secrets_keys="YWJj"))
    with pytest.raises(Error, match="base64"):
        load_secret_box(load_settings(environ={}, home=str(tmp_path), secrets_keys="!!"))
