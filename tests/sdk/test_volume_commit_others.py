"""A volume holds regular files: a commit left out symlinks (and sockets, fifos) without a
word, and a file replaced by a symlink was deleted from the volume in silence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crucible.protocol.volumes import Manifest
from crucible.sdk import _volumes
from crucible.sdk._client import Client


def test_a_commit_names_what_a_volume_cannot_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mount = tmp_path / "mnt"
    (mount / "real").mkdir(parents=True)
    (mount / "real" / "a.txt").write_text("a")
    os.symlink("real/a.txt", mount / "link.txt")
    os.symlink("real", mount / "dirlink")
    os.mkfifo(mount / "pipe")

    others: list[str] = []
    state = _volumes._local_state(mount, others)
    assert set(state) == {"real/a.txt"}
    assert sorted(others) == ["dirlink", "link.txt", "pipe"]

    # Nothing else to publish (the regular file is unchanged from the mounted version):
    # the commit sends nothing, and says what it left out.
    size, mtime_ms = state["real/a.txt"]
    base = Manifest.model_validate(
        {
            "version": 3,
            "files": {"real/a.txt": {"size": size, "mode": 0o644, "mtime_ms": mtime_ms}},
        }
    )
    client = Client("http://127.0.0.1:9", "cru_unused")
    monkeypatch.setitem(_volumes._MOUNTED, "data", _volumes._Mount(mount, base, client))
    try:
        with pytest.warns(UserWarning, match=r"3 path\(s\) not committed.*dirlink, link.txt"):
            assert _volumes.Volume("data", client).commit() is None
    finally:
        client.close()
