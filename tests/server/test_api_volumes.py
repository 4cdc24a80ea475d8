"""Volumes through the API, in-process: commits make versions atomically, concurrent commits
of different files both land, the quota and missing chunks refuse a commit whole, storage is
charged per GiB-month, and one account never sees another's volume."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import select

from crucible.server.billing.entries import check_ledger
from crucible.server.scheduler.loop import SchedulerLoop
from crucible.server.store.tables import ledger_entries

from server_testlib import MakeServer, ManualClock, ServerUnderTest, error_code


def entry(server: ServerUnderTest, token: str, data: bytes) -> dict[str, Any]:
    sha = server.put_blob(token, data)
    return {"size": len(data), "mode": 0o644, "mtime_ms": 1, "chunks": [sha]}


def commit(server: ServerUnderTest, token: str, name: str, base: int, changes: dict[str, Any]):
    return server.request(
        "POST",
        f"/v1/volumes/{name}/commit",
        token=token,
        json={"base_version": base, "changes": changes},
    )


def test_versions_merge_history_and_tenancy(server: ServerUnderTest) -> None:
    alice, bob = server.tenant("alice"), server.tenant("bob")
    r = server.request("GET", "/v1/volumes/weights", token=alice.token)
    assert r.status_code == 404 and "crucible volume create weights" in r.text
    made = server.ok("POST", "/v1/volumes", token=alice.token, json={"name": "weights"})
    assert (made["version"], made["files"]) == (0, 0)
    r = commit(server, alice.token, "weights", 0, {"a.txt": entry(server, alice.token, b"A")})
    assert r.status_code == 201 and r.json()["version"] == 1
    # Two containers started at version 1 commit different files: both land.
    assert (
        commit(
            server, alice.token, "weights", 1, {"dir/b.txt": entry(server, alice.token, b"B")}
        ).status_code
        == 201
    )
    assert (
        commit(
            server, alice.token, "weights", 1, {"c.txt": entry(server, alice.token, b"CC")}
        ).status_code
        == 201
    )
    latest = server.ok("GET", "/v1/volumes/weights/manifest", token=alice.token)
    assert latest["version"] == 3 and sorted(latest["files"]) == ["a.txt", "c.txt", "dir/b.txt"]
    # The same file: the last commit wins; removing with null.
    commit(server, alice.token, "weights", 3, {"a.txt": entry(server, alice.token, b"A2")})
    commit(server, alice.token, "weights", 3, {"c.txt": None})
    files = server.ok("GET", "/v1/volumes/weights/manifest", token=alice.token)["files"]
    assert sorted(files) == ["a.txt", "dir/b.txt"] and files["a.txt"]["size"] == 2
    old = server.ok("GET", "/v1/volumes/weights/manifest?version=1", token=alice.token)
    assert list(old["files"]) == ["a.txt"] and old["files"]["a.txt"]["size"] == 1
    hist = server.ok("GET", "/v1/volumes/weights/history", token=alice.token)
    assert [h["version"] for h in hist] == [5, 4, 3, 2, 1]
    assert all(h["origin"] == "client" for h in hist)
    # bob sees nothing of it, and cannot commit alice's chunks into his own volume.
    assert server.request("GET", "/v1/volumes/weights", token=bob.token).status_code == 404
    assert server.ok("GET", "/v1/volumes", token=bob.token) == []
    server.ok("POST", "/v1/volumes", token=bob.token, json={"name": "weights"})
    stolen = {"size": 1, "chunks": [hashlib.sha256(b"A").hexdigest()]}
    r = commit(server, bob.token, "weights", 0, {"x": stolen})
    assert r.status_code == 404 and "not uploaded" in r.text
    assert server.ok("GET", "/v1/volumes/weights", token=bob.token)["version"] == 0


def test_bad_commits_change_nothing(make_server: MakeServer) -> None:
    server = make_server(volume_quota_gib=1e-6)  # ~1 KiB
    alice = server.tenant("alice")
    server.ok("POST", "/v1/volumes", token=alice.token, json={"name": "v"})
    for path in ("../escape", "a/../../b", ""):
        r = commit(server, alice.token, "v", 0, {path: None})
        assert r.status_code == 400, path
    r = commit(server, alice.token, "v", 0, {"big": entry(server, alice.token, b"x" * 2000)})
    assert r.status_code == 413 and error_code(r) == "quota_exceeded"
    assert "Nothing was committed" in r.json()["error"]["message"]
    r = commit(server, alice.token, "v", 7, {"a": None})
    assert r.status_code == 404
    # Two spellings of one path in one commit: refused, naming both (one change was lost).
    r = commit(server, alice.token, "v", 0, {"q/./r": None, "q/r": None})
    assert r.status_code == 400 and "'q/./r' and 'q/r' are the same path" in r.text, r.text
    # A size that is not what the chunks hold (the quota and the storage charge count it).
    five = entry(server, alice.token, b"12345")
    for size in (0, 14, 16):
        lie = five | {"size": size, "chunks": five["chunks"] * 3}
        r = commit(server, alice.token, "v", 0, {"zero.txt": lie})
        assert r.status_code == 400, r.text
        assert "its chunks hold 15" in r.json()["error"]["message"], r.text
    assert server.ok("GET", "/v1/volumes/v", token=alice.token)["version"] == 0
    # A path that is a file and a folder at once: no container could mount the volume.
    assert commit(server, alice.token, "v", 0, {"a.txt": five, "d/e/f": five}).status_code == 201
    for changes, words in (
        ({"a.txt/child": five}, "under 'a.txt', which is a file"),
        ({"d/e": five}, "'d/e' is a folder"),
        ({"d": five}, "'d' is a folder"),
        ({"x": five, "x/y": five}, "'x' is a folder"),
    ):
        r = commit(server, alice.token, "v", 1, changes)
        assert r.status_code == 409 and words in r.json()["error"]["message"], r.text
    assert server.ok("GET", "/v1/volumes/v", token=alice.token)["version"] == 1
    # Removed in the same commit, the file may become a folder.
    r = commit(server, alice.token, "v", 1, {"a.txt": None, "a.txt/child": five})
    assert r.status_code == 201, r.text
    r = server.request("POST", "/v1/volumes", token=alice.token, json={"name": "bad name!"})
    assert r.status_code == 400
    # "." and ".." name nothing a URL can reach (/v1/volumes/.. is /v1/): refused, for every
    # named object (volumes, secrets, dicts, apps...), not only volumes.
    for route, extra in (("/v1/volumes", {}), ("/v1/secrets", {"values": {"A": "1"}})):
        for name in (".", ".."):
            r = server.request("POST", route, token=alice.token, json={"name": name, **extra})
            assert r.status_code == 400 and "only dots" in r.json()["error"]["message"], r.text


def test_storage_is_charged_per_gib_month(server: ServerUnderTest) -> None:
    clock = ManualClock(1_800_000_000_000)
    server.state.clock = clock
    alice = server.tenant("alice")
    server.ok("POST", "/v1/volumes", token=alice.token, json={"name": "v"})
    # 1 MiB stored; pretend it is 1 GiB by listing the same chunk 1024 times.
    chunk = entry(server, alice.token, b"z" * 1024 * 1024)
    gib = {"size": 1024**3, "mode": 420, "mtime_ms": 1, "chunks": chunk["chunks"] * 1024}
    assert commit(server, alice.token, "v", 0, {"g": gib}).status_code == 201
    clock.now += 30 * 24 * 3_600_000  # a storage month
    SchedulerLoop(server.state)._housekeeping_now()
    with server.state.engine.connect() as conn:
        charges = (
            conn.execute(
                select(ledger_entries.c.cost_micros).where(ledger_entries.c.meter.like("volume:%"))
            )
            .scalars()
            .all()
        )
        assert charges == [100_000]  # $0.10 per GiB-month (the default)
        assert check_ledger(conn) == []
