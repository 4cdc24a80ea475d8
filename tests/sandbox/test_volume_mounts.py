"""Volumes mounted into sandboxed containers: the latest version appears at the mount path,
a commit from inside is a new version everyone sees, a reload brings another container's
commit, and another account's container never sees the volume."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

import crucible

import app_volumes
from harness import Exchange, wait_for


def test_mount_commit_reload_in_sandboxes(sandboxed: Exchange, tenant: Any) -> None:
    vol = crucible.Volume.from_name("scratch", create_if_missing=True, client=tenant)
    with vol.batch_upload() as up:
        up.put_directory(_seed_dir(), "/")
    with app_volumes.app.run(client=tenant):
        listing = app_volumes.write_and_commit.remote("from the container")
        assert listing == ["note.txt", "seed.txt"]
        # A version committed from inside is what everyone reads.
        assert b"".join(vol.read_file("note.txt")) == b"from the container"
        assert vol.history()[0].origin.startswith("ct-")
        # Changed from outside, then reloaded inside.
        tmp = _seed_dir(note="from the laptop")
        with vol.batch_upload(force=True) as up:
            up.put_file(tmp / "note.txt", "note.txt")
        assert app_volumes.read_note.remote() == "from the laptop"


def test_another_account_cannot_mount_the_volume(sandboxed: Exchange, tenant: Any) -> None:
    crucible.Volume.from_name("scratch", create_if_missing=True, client=tenant)
    other = sandboxed.client(sandboxed.new_account(f"other-{uuid.uuid4().hex[:6]}"))
    try:
        # Its own account has no volume of that name: the app is refused before anything runs.
        try:
            with app_volumes.app.run(client=other):
                raise AssertionError("the run should have been refused")
        except crucible.NotFoundError as exc:
            assert "volume 'scratch' not found" in str(exc)
    finally:
        other.close()


def _seed_dir(note: str | None = None) -> Any:
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp(prefix="crucible-vol-"))
    (d / "seed.txt").write_text("seed")
    if note is not None:
        (d / "note.txt").write_text(note)
    return d


def test_an_ended_containers_uncommitted_files_are_not_published(
    sandboxed: Exchange, tenant: Any
) -> None:
    """The containers of one sandbox share a mount directory, and a commit publishes what
    differs there from the volume: a file an earlier app's crashed container wrote and never
    committed was published by the next container's commit (modal2 probe). A container that
    finds no other live one in the sandbox drops such leftovers when it mounts."""
    vol = crucible.Volume.from_name("scratch", create_if_missing=True, client=tenant)
    with vol.batch_upload(force=True) as up:
        up.put_directory(_seed_dir(), "/")
    before = sorted(f.path.rsplit("/", 1)[-1] for f in vol.listdir("/"))
    with app_volumes.app.run(client=tenant), pytest.raises(crucible.Error):
        app_volumes.crash_without_commit.remote("stale.txt")
    # Its container died; the sandbox stays warm for the next app.
    with app_volumes.app.run(client=tenant):
        assert app_volumes.commit_what_is_here.remote() == before
    assert sorted(f.path.rsplit("/", 1)[-1] for f in vol.listdir("/")) == before


def test_a_container_that_stops_commits_what_it_left(sandboxed: Exchange, tenant: Any) -> None:
    """A Modal port has no vol.commit(): Modal commits when the container shuts down. The
    file written and never committed is in the volume once the app stopped (modal2 F5: it
    was lost without a word)."""
    vol = crucible.Volume.from_name("scratch", create_if_missing=True, client=tenant)
    with app_volumes.app.run(client=tenant):
        app_volumes.write_without_commit.remote("kept.txt")
    names = lambda: {f.path.rsplit("/", 1)[-1] for f in vol.listdir("/")}  # noqa: E731
    wait_for(lambda: "kept.txt" in names(), 60, "the commit at exit")
    assert b"".join(vol.read_file("kept.txt")) == b"kept at exit"


def test_a_container_with_volumes_gets_time_to_commit(sandboxed: Exchange, tenant: Any) -> None:
    """The commit at exit came after the @exit hooks, and the agent's SIGKILL came at the
    stop grace (5 s by default; 1 s here): a slow hook or a large output was lost without a
    word (probe3 F7). A container that mounts volumes gets CRUCIBLE_VOLUME_STOP_GRACE_S."""
    vol = crucible.Volume.from_name("scratch", create_if_missing=True, client=tenant)
    with app_volumes.app.run(client=tenant):
        app_volumes.SlowToStop().write.remote("slow.txt")
    names = lambda: {f.path.rsplit("/", 1)[-1] for f in vol.listdir("/")}  # noqa: E731
    wait_for(lambda: "slow.txt" in names(), 60, "the commit after a slow exit hook")
