"""`GET /v1/apps?name=` (what `crucible logs NAME` resolves names with) and the `kind` a
function's FunctionInfo carries, on SQLite and PostgreSQL, tenant by tenant."""

from __future__ import annotations

from server_testlib import ServerUnderTest, error_code


def test_apps_by_name_newest_first_and_per_tenant(server: ServerUnderTest) -> None:
    alice = server.tenant("alice").token
    bob = server.tenant("bob").token
    first = server.new_app(alice, "svc")
    server.new_app(alice, "other")
    second = server.new_app(alice, "svc")
    server.new_app(bob, "svc")
    named = server.ok("GET", "/v1/apps?name=svc", token=alice)
    assert [a["id"] for a in named] == [second, first]
    assert {a["name"] for a in server.ok("GET", "/v1/apps", token=alice)} == {"svc", "other"}
    assert server.ok("GET", "/v1/apps?name=nothing", token=alice) == []
    assert len(server.ok("GET", "/v1/apps?name=svc", token=bob)) == 1  # only bob's own
    for bad_name in ("", "%00", "a%20b", "x" * 129):
        bad = server.request("GET", f"/v1/apps?name={bad_name}", token=alice)
        assert bad.status_code == 400 and error_code(bad) == "invalid_request"
    assert server.request("GET", "/v1/apps?name=svc").status_code == 401


def test_function_info_kind(server: ServerUnderTest) -> None:
    token = server.tenant("alice").token
    app_id = server.new_app(token, "kinds")
    bundle = server.put_blob(token)
    code = {"bundle": bundle, "module": "m", "qualname": "f"}
    specs = [
        {"name": "plain", "code": code},
        {"name": "gen", "code": code, "is_generator": True},
        {"name": "batch", "code": code, "max_batch_size": 8, "batch_wait_ms": 5},
        {"name": "many", "code": code, "max_inputs": 4},
        {"name": "Model", "code": code, "class_params": {}},
        {"name": "web", "code": code, "web": {"kind": "asgi_app", "method": "*", "public": False}},
    ]
    made = server.ok("POST", f"/v1/apps/{app_id}/functions", token=token, json={"functions": specs})
    assert {f["name"]: f["kind"] for f in made} == {
        "plain": "function",
        "gen": "generator",
        "batch": "batched",
        "many": "concurrent",
        "Model": "class",
        "web": "web_endpoint",
    }
