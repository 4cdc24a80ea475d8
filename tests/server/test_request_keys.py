"""Idempotency keys (services/request_keys.py): a request that makes something anew, sent
again with its Idempotency-Key, gets its first answer back and makes nothing more; the key
belongs to one account and one request; a request that failed leaves no key; old keys go.
End to end: the client's transport sends a pod's creation again after the server's answer
was lost on the way (a proxy drops it), and one pod exists; two at once with one key make
one. In-process ASGI and a real uvicorn server, on SQLite and PostgreSQL."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from sqlalchemy import func, select

from crucible.errors import ServerUnavailableError
from crucible.protocol.accounts import Scope
from crucible.protocol.transport import Transport
from crucible.server.services import request_keys
from crucible.server.store.tables import pods, queue_items
from crucible.server.store.tables import request_keys as request_keys_table

from server_testlib import ServerUnderTest, error_code, serving


def _pods_of(server: ServerUnderTest, account_id: str) -> int:
    with server.state.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(pods).where(pods.c.account_id == account_id)
            ).scalar_one()
        )


def test_a_request_sent_again_with_its_key_gets_its_first_answer(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    key = {"Idempotency-Key": "pod-box-1"}
    first = server.request("POST", "/v1/pods", token=alice.token, json={"name": "box"}, headers=key)
    assert first.status_code == 201, first.text
    again = server.request("POST", "/v1/pods", token=alice.token, json={"name": "box"}, headers=key)
    # Not a 409 "you already have a pod called box": the same answer, the same pod.
    assert again.status_code == 201, again.text
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert _pods_of(server, alice.account_id) == 1
    # The same body with its fields in another order is the same request.
    spec = {"name": "two", "cpu": 2, "disk": "20GiB"}
    key2 = {"Idempotency-Key": "pod-two"}
    made = server.ok("POST", "/v1/pods", token=alice.token, json=spec, headers=key2)
    shuffled = dict(reversed(list(spec.items())))
    assert server.ok("POST", "/v1/pods", token=alice.token, json=shuffled, headers=key2) == made
    assert _pods_of(server, alice.account_id) == 2
    # Without a key, each request is its own (the name conflict says so).
    r = server.request("POST", "/v1/pods", token=alice.token, json={"name": "box"})
    assert r.status_code == 409


def test_a_key_used_for_another_request_is_refused(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    key = {"Idempotency-Key": "k-1"}
    server.ok("POST", "/v1/pods", token=alice.token, json={"name": "box"}, headers=key)
    r = server.request("POST", "/v1/pods", token=alice.token, json={"name": "other"}, headers=key)
    assert r.status_code == 409 and error_code(r) == "conflict", r.text
    assert "Idempotency-Key 'k-1' was used for another request" in r.json()["error"]["message"]
    # Another route under the same key: refused too, naming the first one.
    r = server.request(
        "POST", "/v1/queues/q/put", token=alice.token, json={"values": ["eA=="]}, headers=key
    )
    assert r.status_code == 409 and "POST /v1/pods" in r.json()["error"]["message"], r.text
    assert _pods_of(server, alice.account_id) == 1


def test_keys_belong_to_their_account(server: ServerUnderTest) -> None:
    """Bob sending Alice's key gets his own pod, never her answer."""
    alice, bob = server.tenant("alice"), server.tenant("bob")
    key = {"Idempotency-Key": "shared-key"}
    mine = server.ok("POST", "/v1/pods", token=alice.token, json={"name": "box"}, headers=key)
    his = server.ok("POST", "/v1/pods", token=bob.token, json={"name": "box"}, headers=key)
    assert his["id"] != mine["id"]
    assert _pods_of(server, alice.account_id) == 1 and _pods_of(server, bob.account_id) == 1


def test_a_request_that_failed_leaves_no_key(server: ServerUnderTest) -> None:
    """Its retry runs afresh: a pod that asked for a volume not made yet, then made."""
    alice = server.tenant("alice")
    key = {"Idempotency-Key": "with-volume"}
    body = {"name": "box", "volumes": {"/data": "vol"}}
    r = server.request("POST", "/v1/pods", token=alice.token, json=body, headers=key)
    assert r.status_code == 404, r.text
    server.ok("POST", "/v1/volumes", token=alice.token, json={"name": "vol"})
    made = server.ok("POST", "/v1/pods", token=alice.token, json=body, headers=key)
    assert made["name"] == "box" and _pods_of(server, alice.account_id) == 1


def test_other_routes_that_make_something_replay_too(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    admin = server.tenant("ops", scope=Scope.ADMIN)

    def twice(token: str, path: str, body: dict[str, object], key: str) -> object:
        headers = {"Idempotency-Key": key}
        first = server.ok("POST", path, token=token, json=body, headers=headers)
        assert server.ok("POST", path, token=token, json=body, headers=headers) == first
        return first

    server.ok(
        "POST", "/v1/queues", token=alice.token, json={"name": "jobs", "create_if_missing": True}
    )
    twice(alice.token, "/v1/queues/jobs/put", {"values": ["eA==", "eQ=="]}, "put-1")
    with server.state.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(queue_items)).scalar_one() == 2
    first = twice(alice.token, "/v1/deployments", {"name": "web"}, "deploy-1")
    assert isinstance(first, dict)
    versions = server.ok("GET", "/v1/deployments/web", token=alice.token)
    assert len(versions["versions"]) == 1, versions
    twice(alice.token, "/v1/secrets", {"name": "db", "values": {"PASSWORD": "one"}}, "sec-1")
    # A secret's values are left out of what is kept of the request (a plain hash of them
    # would be kept a day): the same key with other values replays the first answer.
    r = server.request(
        "POST",
        "/v1/secrets",
        token=alice.token,
        json={"name": "db", "values": {"PASSWORD": "two"}},
        headers={"Idempotency-Key": "sec-1"},
    )
    assert r.status_code == 201 and r.headers["idempotent-replayed"] == "true", r.text
    run = twice(alice.token, "/v1/apps", {"name": "run", "ephemeral": True}, "app-1")
    listed = server.ok("GET", "/v1/apps?name=run", token=alice.token)
    assert [a["id"] for a in listed] == [run["id"]], listed  # type: ignore[index]
    made = twice(admin.token, "/v1/accounts", {"name": "carol"}, "acct-1")
    assert isinstance(made, dict) and made["name"] == "carol"
    grant = {"account": "carol", "amount_micros": 5_000_000}
    twice(admin.token, "/v1/credits/grants", grant, "grant-1")
    credit = server.ok("GET", "/v1/credits?account=carol", token=admin.token)
    assert credit["balance_micros"] == 5_000_000, credit


@pytest.mark.parametrize("key", ["has space", "x" * 129, "caf\u00e9", ""])
def test_a_key_no_client_sends_is_refused_naming_the_header(
    server: ServerUnderTest, key: str
) -> None:
    alice = server.tenant("alice")
    r = server.request(
        "POST",
        "/v1/pods",
        token=alice.token,
        json={"name": "box"},
        headers={"Idempotency-Key": key.encode()},
    )
    assert r.status_code in (400, 422), r.text
    message = r.json()["error"]["message"]
    assert "Idempotency-Key header must be 1-128 printable ASCII" in message, r.text
    assert _pods_of(server, alice.account_id) == 0


def test_keys_older_than_a_day_are_forgotten(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    key = {"Idempotency-Key": "old"}
    server.ok("POST", "/v1/pods", token=alice.token, json={"name": "box"}, headers=key)
    with server.state.engine.begin() as conn:
        made = conn.execute(select(request_keys_table.c.created_ms)).scalar_one()
        assert request_keys.prune(conn, made + request_keys.KEEP_MS) == 0
        assert request_keys.prune(conn, made + request_keys.KEEP_MS + 1) == 1
        assert conn.execute(select(func.count()).select_from(request_keys_table)).scalar_one() == 0
    # The key is free again: the same request now is a new one (a name conflict).
    r = server.request("POST", "/v1/pods", token=alice.token, json={"name": "box"}, headers=key)
    assert r.status_code == 409


# -- end to end: the client's transport against a real server -----------------------------------


@contextmanager
def _losing_first_answer(port: int, path: bytes) -> Iterator[tuple[int, list[bytes]]]:
    """A proxy to ``port`` that passes every request on, but closes the connection instead
    of passing back the answer to the first request for ``path`` (as a server killed after
    its commit, before its answer). Yields its port and every request head it passed on."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    heads: list[bytes] = []
    lost: list[bool] = []
    stop = threading.Event()

    def read_message(sock: socket.socket) -> tuple[bytes, bytes] | None:
        """One HTTP message's head and its Content-Length body (None: closed first)."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            body += sock.recv(65536)
        return head, body

    def one(client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", port)) as upstream:
            client.settimeout(10)
            upstream.settimeout(10)
            while (request := read_message(client)) is not None:
                heads.append(request[0])
                upstream.sendall(request[0] + b"\r\n\r\n" + request[1])
                answer = read_message(upstream)
                assert answer is not None
                if request[0].split(b" ")[1] == path and not lost:
                    lost.append(True)
                    return  # the answer is lost: the connection closes without it
                client.sendall(answer[0] + b"\r\n\r\n" + answer[1])

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=one, args=(client,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], heads
    finally:
        stop.set()
        listener.close()
        thread.join()


def test_the_client_sends_a_creation_again_when_its_answer_was_lost(
    server: ServerUnderTest,
) -> None:
    alice = server.tenant("alice")
    with serving(server) as port, _losing_first_answer(port, b"/v1/pods") as (proxy, heads):
        t = Transport(f"http://127.0.0.1:{proxy}", alice.token, retry_for_s=10)
        try:
            made = t.post("/v1/pods", {"name": "box"})
        finally:
            t.close()
    assert made["name"] == "box"
    sent = [h for h in heads if h.startswith(b"POST /v1/pods ")]
    assert len(sent) == 2, heads  # sent again after the lost answer...
    keys = {
        line.split(b":", 1)[1].strip()
        for h in sent
        for line in h.split(b"\r\n")
        if line.lower().startswith(b"idempotency-key:")
    }
    assert len(keys) == 1, sent  # ...with the same key...
    assert _pods_of(server, alice.account_id) == 1  # ...and one pod exists


def test_a_request_without_a_key_is_still_not_sent_twice(server: ServerUnderTest) -> None:
    """A queue's get carries no key (its answer is the items): a lost answer is an error that
    says so, and the request went out once."""
    alice = server.tenant("alice")
    server.ok(
        "POST", "/v1/queues", token=alice.token, json={"name": "q", "create_if_missing": True}
    )
    server.ok("POST", "/v1/queues/q/put", token=alice.token, json={"values": ["eA=="]})
    path = b"/v1/queues/q/get"
    with serving(server) as port, _losing_first_answer(port, path) as (proxy, heads):
        t = Transport(f"http://127.0.0.1:{proxy}", alice.token, retry_for_s=10)
        try:
            with pytest.raises(ServerUnavailableError, match="it may have carried it out"):
                t.post("/v1/queues/q/get", {"n": 1, "timeout_s": 0})
        finally:
            t.close()
    assert [h.split(b" ")[1] for h in heads] == [path]


def test_two_requests_with_one_key_at_once_make_one(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    with serving(server) as port:
        t = Transport(f"http://127.0.0.1:{port}", alice.token, retry_for_s=10)

        def create(i: int) -> dict[str, object]:
            got: dict[str, object] = t.post(
                "/v1/pods", {"name": "box"}, idempotency_key="same-for-all"
            )
            return got

        try:
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(create, range(16)))
        finally:
            t.close()
    assert len({a["id"] for a in answers}) == 1
    assert _pods_of(server, alice.account_id) == 1
