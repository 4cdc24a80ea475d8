"""The hosts' sync is served by the hot path (server/hotpath.py) without FastAPI's routing:
it answers as the framework did, refusals in the one error shape included (SQLite and
PostgreSQL, the real app in-process)."""

from __future__ import annotations

from crucible.protocol.accounts import Scope

from server_testlib import MakeServer, error_code


def test_the_sync_answers_and_refuses_as_before(make_server: MakeServer) -> None:
    server = make_server(max_request_bytes=4096)
    host_token = server.tenant("hoster", Scope.HOST).token
    other_host_token = server.tenant("other-hoster", Scope.HOST).token
    user = server.tenant("alice").token
    host_id = server.register_host(host_token, "box")
    path = f"/v1/hosts/{host_id}/sync"

    # An idle sync: the whole reply, empty lists and absent values included.
    reply = server.ok("POST", path, token=host_token, json={"seq": 1})
    assert reply["start"] == [] and reply["stop"] == [] and reply["access"] == []
    assert reply["heartbeat_interval_s"] > 0

    r = server.request("POST", path, json={"seq": 2})
    assert r.status_code == 401 and error_code(r) == "unauthorized"
    r = server.request("POST", path, token=user, json={"seq": 2})
    assert r.status_code == 403 and error_code(r) == "forbidden"
    assert "host agents" in r.json()["error"]["message"]
    # Another account's host is not found (not "forbidden": its existence is not told).
    r = server.request("POST", path, token=other_host_token, json={"seq": 2})
    assert r.status_code == 404 and error_code(r) == "not_found"
    json_type = {"content-type": "application/json"}
    for bad in (b"{", b'{"seq": -1}', b'{"wait_s": 3600}', b'{"containerz": []}', b"[]"):
        r = server.request("POST", path, token=host_token, content=bad, headers=json_type)
        assert r.status_code == 400 and error_code(r) == "invalid_request", (bad, r.text)
    r = server.request("POST", path, token=host_token, json={"containers": [], "pad": "x" * 8000})
    assert r.status_code == 413 and error_code(r) == "payload_too_large"
    # Only POST is a sync.
    r = server.request("GET", path, token=host_token)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
