"""Volumes from a builder's machine against a real exchange: upload, list, stream a file
back, remove, history; and a clear refusal where the host cannot mount them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import crucible
from crucible.sdk._client import Client
from crucible.sdk._volumes import _MOUNTED, mount_volumes

import app_volumes
from harness import Exchange


@pytest.fixture
def builder(exchange: Exchange) -> Iterator[Client]:
    client = exchange.client(exchange.tenant_token("librarian"))
    yield client
    client.close()


def test_upload_list_read_remove_history(
    builder: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    big = os.urandom(9 * 1024 * 1024 + 123)  # three chunks
    (src / "weights.bin").write_bytes(big)
    (src / "sub" / "config.json").write_text('{"layers": 2}')
    vol = crucible.Volume.from_name("models", create_if_missing=True, client=builder)
    with vol.batch_upload() as up:
        up.put_directory(src, "/llm")
    listing = {(e.path, e.type) for e in vol.listdir("/llm")}
    assert listing == {("llm/weights.bin", "file"), ("llm/sub", "dir")}
    assert {e.path for e in vol.listdir("/", recursive=True)} == {
        "llm/weights.bin",
        "llm/sub/config.json",
    }
    chunks = list(vol.read_file("llm/weights.bin"))
    assert len(chunks) == 3 and b"".join(chunks) == big
    with (
        pytest.raises(crucible.InvalidRequestError, match="already exists"),
        vol.batch_upload() as up,
    ):
        up.put_file(src / "sub" / "config.json", "llm/sub/config.json")
    with vol.batch_upload(force=True) as up:
        up.put_file(src / "sub" / "config.json", "llm/sub/config.json")
    vol.remove_file("llm/sub", recursive=True)
    assert [e.path for e in vol.listdir("/", recursive=True)] == ["llm/weights.bin"]
    assert [v.version for v in vol.history()] == [3, 2, 1]
    with pytest.raises(FileNotFoundError):
        list(vol.read_file("nope"))
    # An old version still reads.
    assert b"".join(vol.read_file("llm/sub/config.json", version=1)) == b'{"layers": 2}'
    # A path outside the volume, or its root, is the caller's mistake (it was a ValueError,
    # a traceback in the CLI), named with what to write instead.
    for bad, why in (("../../escape", "leaves the volume"), ("/", "is the volume's root")):
        with pytest.raises(crucible.InvalidRequestError, match=f"{why}.*give a path inside"):
            vol.remove_file(bad, recursive=True)
        with pytest.raises(crucible.InvalidRequestError, match=why), vol.batch_upload() as up:
            up.put_file(src / "weights.bin", bad)
    with pytest.raises(crucible.InvalidRequestError, match="leaves the volume"):
        list(vol.read_file("a/../../b"))
    # A name no file system holds (it was accepted, then broke every mount of the volume).
    too_long = pytest.raises(crucible.InvalidRequestError, match="at most 255 bytes")
    with too_long, vol.batch_upload() as up:
        up.put_file(src / "weights.bin", "dir/" + "x" * 256)
    with vol.batch_upload() as up:  # 255 bytes: held, and mounted (a short temporary name)
        up.put_file(src / "weights.bin", "y" * 255)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    monkeypatch.setenv("CRUCIBLE_VOLUMES_BOUND", str(mnt))  # as the agent names its mounts
    try:
        mount_volumes(builder, {str(mnt): "models"})
    finally:
        _MOUNTED.pop("models", None)
    assert (mnt / ("y" * 255)).read_bytes() == (src / "weights.bin").read_bytes()
    for name in ("..", "../v", ""):  # refused before any request, as Secret.from_name does
        with pytest.raises(crucible.InvalidRequestError, match="volume name"):
            crucible.Volume.from_name(name, client=builder)
    crucible.Volume.delete("models", client=builder)
    with pytest.raises(crucible.NotFoundError):
        vol.info()


def test_a_missing_volume_refuses_the_run_and_process_hosts_cannot_mount(
    builder: Client,
) -> None:
    with (
        pytest.raises(crucible.NotFoundError, match="volume 'scratch' not found"),
        app_volumes.app.run(client=builder),
    ):
        pass
    crucible.Volume.from_name("scratch", create_if_missing=True, client=builder)
    with app_volumes.app.run(client=builder), pytest.raises(crucible.Error, match="sandboxed"):
        app_volumes.write_and_commit.remote("x")
