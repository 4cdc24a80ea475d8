"""Client mistakes get 4xx answers with stable codes and useful messages, never a 500."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from crucible.protocol.accounts import Scope

from server_testlib import V1_ROUTES, MakeServer, ServerUnderTest, Tenant, error_code, sha256

JSON = {"content-type": "application/json"}


class Seeded:
    """One account with a host, an app, a function and a container, ready for bad requests."""

    def __init__(self, server: ServerUnderTest) -> None:
        self.server = server
        self.user: Tenant = server.tenant("alice")
        self.host: Tenant = server.tenant("alice", Scope.HOST)
        self.bundle = server.put_blob(self.user.token)
        self.app_id = server.new_app(self.user.token)
        self.fn = server.new_function(self.user.token, self.app_id, self.bundle)
        self.host_id = server.register_host(self.host.token)
        self.container, self.ctoken = server.place_container(self.fn, self.host_id)

    def token_for(self, path: str) -> str:
        if path.startswith("/v1/hosts/register") or path.endswith("/sync"):
            return self.host.token
        if path.startswith("/v1/containers/"):
            return self.ctoken
        return self.user.token

    def path(self, template: str) -> str:
        return (
            template.replace("{app_id}", self.app_id)
            .replace("{function_id}", self.fn)
            .replace("{host_id}", self.host_id)
            .replace("{container_id}", self.container)
            .replace("{sha}", self.bundle)
        )


def expect_400(r: httpx.Response, *fields: str, code: str = "invalid_request") -> str:
    assert r.status_code == 400, (r.request.url, r.status_code, r.text)
    assert error_code(r) == code, r.text
    message = r.json()["error"]["message"]
    for name in fields:
        assert name in message, (name, message)
    return str(message)


def function_spec(bundle: str, **extra: Any) -> dict[str, Any]:
    return {"name": "f", "code": {"bundle": bundle, "module": "m", "qualname": "f"}, **extra}


def test_bad_bodies_are_400_naming_the_field(server: ServerUnderTest) -> None:
    fx = Seeded(server)
    user = fx.user.token
    functions = f"/v1/apps/{fx.app_id}/functions"
    calls = f"/v1/functions/{fx.fn}/calls"
    arg = {"args": {"data": "gAQ="}}

    # Not JSON, or not an object.
    for content in (b"{bad", b"", b"[1]", b'"app"', b"null", b"\xff\xfe{"):
        r = server.request("POST", "/v1/apps", token=user, content=content, headers=JSON)
        expect_400(r)
    # Wrong types, unknown fields, out-of-range values: the message names the field.
    cases: list[tuple[str, str, Any, str]] = [
        ("POST", "/v1/apps", {"name": 5}, "name"),
        ("POST", "/v1/apps", {"name": "has spaces"}, "name"),
        ("POST", "/v1/apps", {"name": "x", "ephemeral": "maybe"}, "ephemeral"),
        ("POST", "/v1/apps", {"name": "x", "colour": "red"}, "colour"),
        ("POST", "/v1/apps", {}, "name"),
        ("POST", functions, {"functions": []}, "functions"),
        ("POST", functions, {"function": [function_spec(fx.bundle)]}, "function"),
        ("POST", functions, {"functions": [function_spec("nothex")]}, "functions.0.code.bundle"),
        (
            "POST",
            functions,
            {"functions": [function_spec(fx.bundle, resources={"cpu": -1})]},
            "functions.0.resources.cpu",
        ),
        (
            "POST",
            functions,
            {
                "functions": [
                    function_spec(fx.bundle, resources={"gpus": [{"model": "H100", "count": 0}]})
                ]
            },
            "functions.0.resources.gpus.0.count",
        ),
        (
            "POST",
            functions,
            {"functions": [function_spec(fx.bundle, timeout_s="soon")]},
            "functions.0.timeout_s",
        ),
        (
            "POST",
            functions,
            {"functions": [function_spec(fx.bundle, retries={"max_retries": 1e6})]},
            "functions.0.retries.max_retries",
        ),
        (
            "POST",
            functions,
            {"functions": [function_spec(fx.bundle, gpu="H100")]},
            "functions.0.gpu",
        ),
        ("POST", calls, {"inputs": []}, "inputs"),
        ("POST", calls, {"inptus": [arg]}, "inptus"),
        ("POST", calls, {"inputs": [{"args": {"data": 5}}]}, "inputs.0.args.data"),
        ("POST", calls, {"inputs": [{"args": {"ref": "nothex"}}]}, "inputs.0.args.ref"),
        ("POST", calls, {"inputs": [{"args": {"data": "gAQ=", "size": -1}}]}, "inputs.0.args.size"),
        ("POST", calls, {"inputs": [arg], "wait_s": 61}, "wait_s"),
        ("POST", calls, {"inputs": [arg], "group_id": "not a group"}, "group_id"),
        ("POST", calls, {"inputs": [arg], "start_index": -1}, "start_index"),
        (
            "POST",
            calls,
            {"inputs": [{"args": {"data": "gAQ="}, "idempotency_key": "k" * 200}]},
            "inputs.0.idempotency_key",
        ),
        ("POST", "/v1/groups/g/results", {"limit": 0}, "limit"),
        ("POST", "/v1/groups/g/results", {"indices": "all"}, "indices"),
        ("POST", "/v1/tokens", {"scope": "root"}, "scope"),
        ("POST", "/v1/accounts", {"name": ""}, "name"),
    ]
    for method, path, body, field in cases:
        r = server.request(method, path, token=user, json=body)
        expect_400(r, field)

    host_cases: list[tuple[str, Any, str]] = [
        ("/v1/hosts/register", {"name": "h"}, "inventory"),
        (
            "/v1/hosts/register",
            {"name": "h", "inventory": {"cpu_cores": 0, "memory_mib": 1, "disk_mib": 0}},
            "inventory.cpu_cores",
        ),
        (  # more cores than the placement engine indexes: it failed every scheduler tick
            "/v1/hosts/register",
            {"name": "h", "inventory": {"cpu_cores": 65_537, "memory_mib": 1, "disk_mib": 0}},
            "inventory.cpu_cores",
        ),
        (
            "/v1/hosts/register",
            {
                "name": "h",
                "inventory": {
                    "cpu_cores": 1,
                    "memory_mib": 1,
                    "disk_mib": 0,
                    "gpus": [{"index": -1, "model": "H100", "memory_mib": 1, "uuid": "u"}],
                },
            },
            "inventory.gpus.0.index",
        ),
        (f"/v1/hosts/{fx.host_id}/sync", {"wait_s": 100}, "wait_s"),
        (
            f"/v1/hosts/{fx.host_id}/sync",
            {"containers": [{"state": "running"}]},
            "containers.0.container_id",
        ),
    ]
    for path, body, field in host_cases:
        expect_400(server.request("POST", path, token=fx.host.token, json=body), field)

    exchange = f"/v1/containers/{fx.container}/exchange"
    output = {"call_id": "ca-1", "attempt": 1, "status": "exploded"}
    for body, field in [({"want": -1}, "want"), ({"outputs": [output]}, "outputs.0.status")]:
        expect_400(server.request("POST", exchange, token=fx.ctoken, json=body), field)

    # Query parameters.
    for params, field in [
        ({"limit": "abc"}, "limit"),
        ({"limit": 0}, "limit"),
        ({"limit": 100_000}, "limit"),
    ]:
        expect_400(server.request("GET", "/v1/calls", token=user, params=params), field)
    expect_400(server.request("GET", "/v1/calls/ca-1", token=user, params={"wait_s": -1}), "wait_s")


def test_payload_mistakes(make_server: MakeServer) -> None:
    server = make_server(inline_payload_max_bytes=64)
    fx = Seeded(server)
    calls = f"/v1/functions/{fx.fn}/calls"

    r = server.request(
        "POST", calls, token=fx.user.token, json={"inputs": [{"args": {"data": "not base64!"}}]}
    )
    assert "base64" in expect_400(r)
    r = server.request("POST", calls, token=fx.user.token, json={"inputs": [{"args": {}}]})
    expect_400(r, "data", "ref")
    big = "A" * 4096
    r = server.request(
        "POST", calls, token=fx.user.token, json={"inputs": [{"args": {"data": big}}]}
    )
    assert r.status_code == 413 and error_code(r) == "payload_too_large"
    assert "blob" in r.json()["error"]["message"]  # says what to do instead
    never_uploaded = sha256(b"never uploaded")
    r = server.request(
        "POST",
        calls,
        token=fx.user.token,
        json={"inputs": [{"args": {"ref": never_uploaded, "size": 1}}]},
    )
    assert r.status_code == 404 and error_code(r) == "not_found"
    assert f"PUT /v1/blobs/{never_uploaded}" in r.json()["error"]["message"]
    # None of it was accepted.
    assert server.ok("GET", "/v1/calls", token=fx.user.token)["calls"] == []


def test_oversized_request_bodies_are_413(make_server: MakeServer) -> None:
    server = make_server(max_request_bytes=1024)
    fx = Seeded(server)
    user = fx.user.token
    just_fits = json.dumps({"name": "x"}).encode().ljust(1024)
    assert (
        server.request("POST", "/v1/apps", token=user, content=just_fits, headers=JSON).status_code
        == 201
    )
    too_big = json.dumps({"name": "x"}).encode().ljust(1025)
    for path in ("/v1/apps", f"/v1/functions/{fx.fn}/calls", "/v1/groups/g/results"):
        r = server.request("POST", path, token=user, content=too_big, headers=JSON)
        assert r.status_code == 413, (path, r.status_code, r.text)
        assert error_code(r) == "payload_too_large"
    inputs = [{"args": {"data": "gAQ="}}] * 200
    r = server.request("POST", f"/v1/functions/{fx.fn}/calls", token=user, json={"inputs": inputs})
    assert r.status_code == 413 and "fewer inputs" in r.json()["error"]["message"]
    # Blob uploads have their own, larger limit.
    blob = b"b" * 8192
    r = server.request("PUT", f"/v1/blobs/{sha256(blob)}", token=user, content=blob)
    assert r.status_code == 201 and r.json() == {"sha256": sha256(blob), "size": len(blob)}


def test_oversized_chunked_body_is_413(make_server: MakeServer) -> None:
    server = make_server(max_request_bytes=1024)
    user = server.tenant("alice")

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "x"'
        for _ in range(64):
            yield b" " * 64
        yield b"}"

    r = server.request("POST", "/v1/apps", token=user.token, content=chunks(), headers=JSON)
    assert r.status_code == 413
    assert error_code(r) == "payload_too_large"


def test_blob_path_and_content_checks(make_server: MakeServer) -> None:
    server = make_server(max_blob_bytes=1024)
    user = server.tenant("alice")
    data = b"some bytes"
    good = sha256(data)
    for bad in ("abc", good.upper(), "g" * 64, good[:-1], good + "0", "z" * 64):
        for method in ("PUT", "GET", "HEAD"):
            r = server.request(method, f"/v1/blobs/{bad}", token=user.token, content=b"")
            assert r.status_code == 400, (method, bad, r.status_code)
            if method != "HEAD":
                assert "sha256" in expect_400(r)

    def leftovers() -> list[str]:
        return sorted(p.name for p in server.state.blobs.root.rglob("*") if p.is_file())

    # Bytes that do not hash to the path are refused and leave nothing behind.
    r = server.request("PUT", f"/v1/blobs/{good}", token=user.token, content=b"other bytes")
    assert sha256(b"other bytes") in expect_400(r)
    assert leftovers() == []
    assert server.request("GET", f"/v1/blobs/{good}", token=user.token).status_code == 404
    assert server.request("HEAD", f"/v1/blobs/{good}", token=user.token).status_code == 404
    # Over the blob limit: 413, nothing behind.
    huge = b"h" * 2048
    r = server.request("PUT", f"/v1/blobs/{sha256(huge)}", token=user.token, content=huge)
    assert r.status_code == 413 and error_code(r) == "payload_too_large"
    assert leftovers() == []
    # The real thing round-trips, and uploading it again is harmless.
    for _ in range(2):
        r = server.request("PUT", f"/v1/blobs/{good}", token=user.token, content=data)
        assert r.status_code == 201 and r.json() == {"sha256": good, "size": len(data)}
    r = server.request("GET", f"/v1/blobs/{good}", token=user.token)
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == "application/octet-stream"
    assert leftovers() == [good]


def test_unknown_gpu_models_are_invalid_gpu(server: ServerUnderTest) -> None:
    fx = Seeded(server)
    path = f"/v1/apps/{fx.app_id}/functions"
    for gpus in (
        [{"model": "H1000", "count": 1}],
        [{"model": "H100", "count": 1}, {"model": "TPUv5", "count": 1}],  # a bad fallback too
        [{"model": "", "count": 1}],
    ):
        spec = function_spec(fx.bundle, resources={"gpus": gpus})
        r = server.request("POST", path, token=fx.user.token, json={"functions": [spec]})
        message = expect_400(r, code="invalid_gpu")
        assert repr(gpus[-1]["model"]) in message and "H100" in message  # lists known models
    # Nothing was registered by the refused requests.
    assert server.ok("GET", f"/v1/apps/{fx.app_id}", token=fx.user.token)["functions"] == 1
    good = function_spec(
        fx.bundle,
        resources={"gpus": [{"model": "H100", "count": 2}, {"model": "A100-80GB", "count": 4}]},
    )
    made = server.ok("POST", path, token=fx.user.token, json={"functions": [good]})
    assert made[0]["resources"]["gpus"] == good["resources"]["gpus"]


def test_client_mistakes_never_get_a_500(server: ServerUnderTest) -> None:
    """Junk at every route, with a token the route accepts: 4xx with the error body."""
    fx = Seeded(server)
    odd_ids = ["x" * 3000, "ü-ñ-\u2603", "'; DROP TABLE calls; --", "%25", "0", "a" * 64]
    bodies: list[dict[str, Any]] = [
        {"json": {}},
        {"json": []},
        {"json": "x"},
        {"json": {"zzz": {"deep": [1, 2, {"x": None}]}}},
        {"content": b"\x00\x01\x02", "headers": JSON},
        {"content": b"{" * 5000, "headers": JSON},
        {"content": b'{"a": 1e999999}', "headers": JSON},
        {"content": b"name=x", "headers": {"content-type": "application/x-www-form-urlencoded"}},
    ]
    seen = 0
    for method, template in V1_ROUTES:
        token = fx.token_for(template)
        paths = [fx.path(template)] + [re.sub(r"\{[a-z_]+\}", odd, template) for odd in odd_ids]
        for path in paths:
            for body in bodies if method in ("POST", "PUT") else [{}]:
                r = server.request(
                    method, path, token=token, params={"state": path[-40:], "wait_s": 0}, **body
                )
                seen += 1
                assert r.status_code < 500, (method, path[:80], body, r.status_code, r.text)
                if r.status_code >= 400 and method != "HEAD":
                    error_code(r)
    assert seen > 500


# -- client mistakes that do get a 500 today ------------------------------------------------


def _new_calls(server: ServerUnderTest, fx: Seeded, body: dict[str, Any]) -> httpx.Response:
    return server.request("POST", f"/v1/functions/{fx.fn}/calls", token=fx.user.token, json=body)


def test_repeated_idempotency_key_in_one_request(server: ServerUnderTest) -> None:
    fx = Seeded(server)
    arg = {"args": {"data": "gAQ="}, "idempotency_key": "same"}
    r = _new_calls(server, fx, {"inputs": [arg, arg]})
    assert r.status_code == 201, r.text
    first, second = r.json()["call_ids"]
    assert first == second


@pytest.mark.parametrize("case", ["start_index", "payload_size", "group_indices"])
def test_out_of_range_integers_are_refused(server: ServerUnderTest, case: str) -> None:
    fx = Seeded(server)
    arg = {"args": {"data": "gAQ="}}
    if case == "start_index":
        r = _new_calls(server, fx, {"inputs": [arg], "group_id": "g", "start_index": 2**63})
    elif case == "payload_size":
        r = _new_calls(server, fx, {"inputs": [{"args": {"ref": fx.bundle, "size": 2**63}}]})
    else:
        r = server.request(
            "POST", "/v1/groups/g/results", token=fx.user.token, json={"indices": [0, 2**63]}
        )
    assert r.status_code in (200, 201, 400), r.text
    if r.status_code == 400:
        assert error_code(r) == "invalid_request"


def test_infinite_cpu_inventory_is_refused(server: ServerUnderTest) -> None:
    host = server.tenant("alice", Scope.HOST)
    body = b'{"name": "h", "inventory": {"cpu_cores": Infinity, "memory_mib": 1, "disk_mib": 0}}'
    r = server.request("POST", "/v1/hosts/register", token=host.token, content=body, headers=JSON)
    expect_400(r, "cpu_cores")


def test_duplicate_gpu_indices_are_refused(server: ServerUnderTest) -> None:
    host = server.tenant("alice", Scope.HOST)
    gpu = {"index": 0, "model": "H100", "memory_mib": 81920, "uuid": "GPU-1"}
    inventory = {
        "cpu_cores": 8,
        "memory_mib": 1024,
        "disk_mib": 0,
        "gpus": [gpu, {**gpu, "uuid": "GPU-2"}],
    }
    r = server.request(
        "POST", "/v1/hosts/register", token=host.token, json={"name": "h", "inventory": inventory}
    )
    expect_400(r, "index")


def test_long_strings_do_not_500(
    server: ServerUnderTest, database_url: str, request: pytest.FixtureRequest
) -> None:
    fx = Seeded(server)
    inv = {"cpu_cores": 1, "memory_mib": 1024, "disk_mib": 0}
    report = {"container_id": fx.container, "state": "exited", "exit_code": 1, "reason": "r" * 100}
    answers = [
        server.request(
            "POST",
            "/v1/hosts/register",
            token=fx.host.token,
            json={"name": "h2", "inventory": inv, "agent_version": "v" * 100},
        ),
        server.request(
            "POST",
            f"/v1/hosts/{fx.host_id}/sync",
            token=fx.host.token,
            json={"containers": [report]},
        ),
    ]
    assert [r.status_code < 500 for r in answers] == [True, True], [r.text for r in answers]


def test_nul_characters_do_not_500(
    server: ServerUnderTest, database_url: str, request: pytest.FixtureRequest
) -> None:
    fx = Seeded(server)
    user = fx.user.token
    attempts = [
        server.request("GET", "/v1/apps/ap%00x", token=user),
        server.request("GET", "/v1/calls/ca%00x", token=user),
        server.request("GET", "/v1/calls", token=user, params={"app_id": "a\x00b"}),
        server.request("POST", "/v1/groups/g%00x/results", token=user, json={}),
        server.request("POST", "/v1/tokens", token=user, json={"name": "a\x00b"}),
        server.request("POST", "/v1/hosts/ho%00x/sync", token=fx.host.token, json={}),
    ]
    for r in attempts:
        assert r.status_code < 500, (r.request.url, r.status_code, r.text)


def test_a_body_that_is_not_json_and_a_huge_echo_are_said_plainly(server: ServerUnderTest) -> None:
    """Not JSON: the message said "0: JSON decode error" (an offset shown as a field). An
    error echoing what the client sent is cut (a 60,000-character name came back twice)."""
    user = server.tenant("alice").token
    r = server.request("POST", "/v1/apps", token=user, content=b"hello{", headers=JSON)
    message = r.json()["error"]["message"]
    assert r.status_code == 400 and message.startswith("the request body is not valid JSON")
    assert "at character 0" in message and "send a JSON object" in message, message
    r = server.request("GET", "/v1/dicts/" + "x" * 60_000, token=user)
    assert r.status_code in (400, 404), r.text
    assert len(r.json()["error"]["message"]) < 4_100 and "more characters" in r.text
