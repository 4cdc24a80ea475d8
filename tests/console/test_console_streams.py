"""The console's server-sent events over a real socket (the app under uvicorn in a thread,
real SQLite and PostgreSQL stores): log lines arrive as they are sent, a reconnecting
browser resumes after the last line it got, another tenant's stream is not found, and
revoking the token ends the stream."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from crucible.protocol.accounts import Scope
from crucible.testing import free_port, wait_for

from console_testlib import ServerUnderTest, csrf_of

H100 = [{"index": 0, "model": "H100", "memory_mib": 81920, "uuid": "g0"}]


@pytest.fixture
def live(server: ServerUnderTest) -> Iterator[str]:
    """The server's app listening on loopback; yields its URL."""
    port = free_port()
    uv = uvicorn.Server(
        uvicorn.Config(server.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    wait_for(lambda: uv.started, 20, "uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(20)


def _signed_in(url: str, token: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=30)
    form = client.get("/login").text
    r = client.post("/login", data={"csrf": csrf_of(form), "token": token})
    assert r.status_code == 303, r.text
    return client


def _events(response: httpx.Response) -> Iterator[tuple[str, str, str]]:
    """(event, id, data) of each event of an SSE response."""
    name, ident, data = "message", "", []
    for line in response.iter_lines():
        if not line:
            if data:
                yield name, ident, "\n".join(data)
            name, ident, data = "message", "", []
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("id: "):
            ident = line[4:]
        elif line.startswith("data: "):
            data.append(line[6:])


def test_logs_stream_live_and_resume(server: ServerUnderTest, live: str) -> None:
    admin = server.tenant("acme", Scope.ADMIN)
    host = server.tenant("acme", Scope.HOST)
    host_id = server.register_host(host.token, "h", gpus=H100)
    app_id = server.new_app(admin.token, "demo")
    fn = server.new_function(admin.token, app_id, server.put_blob(admin.token))
    cid, ctoken = server.place_container(fn, host_id)
    worker = httpx.Client(base_url=live, headers={"authorization": f"Bearer {ctoken}"})

    def say(text: str) -> None:
        sent = {"lines": [{"ts_ms": 1, "stream": "stdout", "line": text}]}
        assert worker.post(f"/v1/containers/{cid}/logs", json=sent).status_code == 204

    me = _signed_in(live, admin.token)
    say("first")
    path = f"/apps/{app_id}/logs/stream"
    seen: list[tuple[str, str]] = []
    with me.stream("GET", path) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for name, ident, data in _events(r):
            if name != "line":
                continue
            seen.append((ident, json.loads(data)["line"]))
            if len(seen) == 1:
                say("<b>second</b>")  # sent while the stream is open
            else:
                break
    assert [line for _, line in seen] == ["first", "<b>second</b>"]

    # A reconnecting EventSource sends the last id it got: the stream resumes after it.
    say("third")
    with me.stream("GET", path, headers={"last-event-id": seen[0][0]}) as r:
        got: list[str] = []
        for name, _, data in _events(r):
            if name == "line":
                got.append(json.loads(data)["line"])
            if len(got) == 2:
                break
    assert got == ["<b>second</b>", "third"]
    # An id past what the store holds is ignored, not a failed stream.
    with me.stream("GET", path, headers={"last-event-id": "9" * 30}) as r:
        assert r.status_code == 200
        assert next(e for e in _events(r) if e[0] == "line")

    # Another tenant's stream is not found; a revoked token's session is over.
    other = _signed_in(live, server.tenant("other", Scope.USER).token)
    assert other.get(path).status_code == 404
    server.ok("DELETE", f"/v1/tokens/{admin.token_id}?force=true", token=admin.token)
    assert me.get(path).status_code == 401
    for c in (worker, me, other):
        c.close()


def test_table_stream_sends_rows(server: ServerUnderTest, live: str) -> None:
    admin = server.tenant("acme", Scope.ADMIN)
    app_id = server.new_app(admin.token, "demo")
    fn = server.new_function(admin.token, app_id, server.put_blob(admin.token))
    made = server.new_calls(admin.token, fn, 2)
    me = _signed_in(live, admin.token)
    with me.stream("GET", f"/calls/stream?app_id={app_id}") as r:
        html = next(e[2] for e in _events(r) if e[0] == "html")
    assert all(call_id in html for call_id in made) and "<script" not in html
    me.close()
