"""The same request, or conflicting ones, many at once against a real server (uvicorn on
loopback, the routes in their worker threads), on SQLite and PostgreSQL: one pod or cluster
per name, one running version after rollbacks at once, a version number per deploy, a
dict's popped entry to one caller, every commit to one volume kept, and a clear 409 (never a
500) for creates of one name. Also an app's live containers count its own only."""

from __future__ import annotations

import base64
import collections
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx

from crucible.protocol.accounts import Scope

from server_testlib import ServerUnderTest, Tenant, serving, sha256

N = 16  # requests at once


@contextmanager
def _client(server: ServerUnderTest, who: Tenant) -> Iterator[httpx.Client]:
    with serving(server) as port:
        headers = {"Authorization": f"Bearer {who.token}"}
        limits = httpx.Limits(max_connections=N)
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60, limits=limits
        ) as client:
            yield client


def _at_once(n: int, send: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(send, range(n)))


def _statuses(answers: list[httpx.Response]) -> collections.Counter[int]:
    return collections.Counter(r.status_code for r in answers)


def test_creates_of_one_pod_name_at_once_make_one_pod(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    with _client(server, alice) as c:
        answers = _at_once(N, lambda i: c.post("/v1/pods", json={"name": "box"}))
        pods = [p for p in c.get("/v1/pods").json() if p["name"] == "box"]
        clusters = _at_once(
            N, lambda i: c.post("/v1/clusters", json={"name": "gang", "gpu": "H100:1", "nodes": 2})
        )
        made = [x for x in c.get("/v1/clusters").json() if x["name"] == "gang"]
    assert _statuses(answers) == {201: 1, 409: N - 1}, [r.text for r in answers]
    assert len(pods) == 1
    assert _statuses(clusters) == {201: 1, 409: N - 1}, [r.text for r in clusters]
    assert len(made) == 1


def _deploy_version(c: httpx.Client, bundle: str) -> int:
    started = c.post("/v1/deployments", json={"name": "web"}).json()
    fn = {"name": "f", "code": {"bundle": bundle, "module": "m", "qualname": "f"}}
    r = c.post(f"/v1/apps/{started['app_id']}/functions", json={"functions": [fn]})
    assert r.status_code < 300, r.text
    r = c.post("/v1/deployments/web/activate", json={"app_id": started["app_id"]})
    assert r.status_code == 200, r.text
    return int(started["version"])


def test_rollbacks_at_once_leave_one_version_running(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    bundle = server.put_blob(alice.token)
    with _client(server, alice) as c:
        assert [_deploy_version(c, bundle) for _ in range(4)] == [1, 2, 3, 4]
        for _ in range(3):
            answers = _at_once(
                N, lambda i: c.post("/v1/deployments/web/rollback", json={"version": 1 + i % 3})
            )
            assert set(_statuses(answers)) <= {200, 409}, [r.text for r in answers]
            info = c.get("/v1/deployments/web").json()
            running = [v["version"] for v in info["versions"] if v["state"] == "running"]
            assert running == [info["version"]], info


def test_deploys_at_once_each_get_their_own_version(server: ServerUnderTest) -> None:
    """The first deploys of a new name at once, too: one deployment, versions 1..N."""
    alice = server.tenant("alice")
    with _client(server, alice) as c:
        answers = _at_once(N, lambda i: c.post("/v1/deployments", json={"name": "fresh"}))
        info = c.get("/v1/deployments/fresh").json()
    assert _statuses(answers) == {201: N}, [r.text for r in answers]
    assert sorted(r.json()["version"] for r in answers) == list(range(1, N + 1))
    assert len({r.json()["deployment_id"] for r in answers}) == 1, info


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_a_popped_entry_goes_to_one_caller(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    keys = [_b64(f"job-{i}") for i in range(30)]
    with _client(server, alice) as c:
        c.post("/v1/dicts", json={"name": "work", "create_if_missing": True})
        for _ in range(3):
            entries = [{"key": k, "value": _b64("v")} for k in keys]
            assert c.post("/v1/dicts/work/put", json={"entries": entries}).status_code == 200
            answers = _at_once(N, lambda i: c.post("/v1/dicts/work/pop", json={"keys": keys}))
            assert _statuses(answers) == {200: N}
            got = collections.Counter(e["key"] for r in answers for e in r.json()["entries"])
            assert sorted(got) == sorted(keys) and set(got.values()) == {1}, got


def test_commits_to_one_volume_at_once_are_all_kept(server: ServerUnderTest) -> None:
    """Each adds its own file on the same base version (two containers at once)."""
    alice = server.tenant("alice")
    files = [f"file {i}".encode() for i in range(N)]
    shas = [server.put_blob(alice.token, data) for data in files]
    with _client(server, alice) as c:
        assert c.post("/v1/volumes", json={"name": "vol"}).status_code == 200

        def commit(i: int) -> httpx.Response:
            change = {f"f{i}.txt": {"size": len(files[i]), "chunks": [shas[i]]}}
            return c.post("/v1/volumes/vol/commit", json={"base_version": 0, "changes": change})

        answers = _at_once(N, commit)
        manifest = c.get("/v1/volumes/vol/manifest").json()
    assert _statuses(answers) == {201: N}, [r.text for r in answers]
    assert sorted(r.json()["version"] for r in answers) == list(range(1, N + 1))
    assert sorted(manifest["files"]) == sorted(f"f{i}.txt" for i in range(N))
    assert sha256(files[0]) == shas[0]


def test_creates_of_one_name_at_once_are_a_conflict_not_an_error(
    server: ServerUnderTest,
) -> None:
    alice = server.tenant("alice")
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnTr4dHgZmQyYb3T1ZJmGJbGUMH9UrZNfQ2qD6kXWn2"
    bodies: dict[str, Callable[[int], dict[str, Any]]] = {
        "/v1/secrets": lambda i: {"name": "db", "values": {"K": str(i)}},
        "/v1/ssh-keys": lambda i: {"public_key": key, "name": "laptop"},
    }
    with _client(server, alice) as c:
        for path, body in bodies.items():
            answers = _at_once(N, lambda i, p=path, b=body: c.post(p, json=b(i)))
            counts = _statuses(answers)
            assert counts[201] == 1 and counts[201] + counts[409] == N, (
                path,
                [r.text for r in answers],
            )
            assert all(
                "error" in r.json() and r.json()["error"]["message"]
                for r in answers[1:]
                if r.status_code == 409
            )


def test_an_apps_live_containers_are_its_own(server: ServerUnderTest) -> None:
    """Bob's running container is not counted on Alice's apps (it was, on every one)."""
    alice, bob = server.tenant("alice"), server.tenant("bob")
    host = server.register_host(server.tenant("hoster", scope=Scope.HOST).token)
    bundle = server.put_blob(bob.token)
    bob_app = server.new_app(bob.token, "busy")
    server.place_container(server.new_function(bob.token, bob_app, bundle), host)
    server.new_app(alice.token, "idle")
    assert [a["containers"] for a in server.ok("GET", "/v1/apps", token=alice.token)] == [0]
    assert [a["containers"] for a in server.ok("GET", "/v1/apps", token=bob.token)] == [1]


def test_writes_of_one_new_name_at_once_all_succeed(server: ServerUnderTest) -> None:
    """A volume's create-if-missing and a dict's put of one new key, at once: one volume,
    one entry, every request answered 200 (some were 500)."""
    alice = server.tenant("alice")
    entry = {"entries": [{"key": _b64("k"), "value": _b64("v")}]}
    with _client(server, alice) as c:
        volumes = _at_once(N, lambda i: c.post("/v1/volumes", json={"name": "shared"}))
        c.post("/v1/dicts", json={"name": "d", "create_if_missing": True})
        puts = _at_once(N, lambda i: c.post("/v1/dicts/d/put", json=entry))
        once = _at_once(
            N, lambda i: c.post("/v1/dicts/d/put", json={**entry, "skip_if_exists": True})
        )
        listed = [v for v in c.get("/v1/volumes").json() if v["name"] == "shared"]
        items = c.get("/v1/dicts/d/items").json()["entries"]
    assert _statuses(volumes) == {200: N}, [r.text for r in volumes]
    assert len(listed) == 1
    assert _statuses(puts) == {200: N}, [r.text for r in puts]
    assert sorted(r.json()["written"] for r in once) == [0] * N  # the key was there already
    assert len(items) == 1


def test_creates_and_deletes_of_one_secret_at_once(server: ServerUnderTest) -> None:
    """Each is applied whole, one after the other: never a 500 (a create that found the
    name, then its row gone)."""
    alice = server.tenant("alice")
    with _client(server, alice) as c:
        for _ in range(3):

            def send(i: int) -> httpx.Response:
                if i % 2:
                    return c.delete("/v1/secrets/db")
                body = {"name": "db", "values": {"K": str(i)}, "overwrite": True}
                return c.post("/v1/secrets", json=body)

            answers = _at_once(N, send)
            assert set(_statuses(answers)) <= {200, 201, 204, 404}, [r.text for r in answers]
