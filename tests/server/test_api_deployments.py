"""Deployments through the API: versions, activation, forwarding of calls to the current
version, retiring drained versions, rollback, stop, lookups, and tenant isolation."""

from __future__ import annotations

import time

from sqlalchemy import select

from crucible.server.services.apps import stop_abandoned_apps
from crucible.server.services.deployments import retire_drained_versions
from crucible.server.store.tables import apps, calls

from server_testlib import ServerUnderTest, error_code


def _version(server: ServerUnderTest, token: str, name: str = "svc") -> tuple[str, int]:
    started = server.ok("POST", "/v1/deployments", token=token, json={"name": name})
    bundle = server.put_blob(token)
    spec = {"name": "f", "code": {"bundle": bundle, "module": "m", "qualname": "f"}}
    server.ok(
        "POST", f"/v1/apps/{started['app_id']}/functions", token=token, json={"functions": [spec]}
    )
    return started["app_id"], started["version"]


def _app_state(server: ServerUnderTest, app_id: str) -> str:
    with server.state.engine.connect() as conn:
        return str(conn.execute(select(apps.c.state).where(apps.c.id == app_id)).scalar())


def test_redeploy_rolls_over_without_dropping_calls(server: ServerUnderTest) -> None:
    token = server.tenant("alice").token
    v1, n1 = _version(server, token)
    assert n1 == 1
    # Not activated yet: nothing to look up, and its functions take no calls.
    r = server.request("GET", "/v1/deployments/svc/functions/f", token=token)
    assert r.status_code == 404 and "not activated" in r.text
    info = server.ok("POST", "/v1/deployments/svc/activate", token=token, json={"app_id": v1})
    assert (info["state"], info["version"], info["app_id"]) == ("running", 1, v1)
    f1 = server.ok("GET", "/v1/deployments/svc/functions/f", token=token)["id"]
    [old_call] = server.new_calls(token, f1)

    v2, n2 = _version(server, token)
    assert n2 == 2 and _app_state(server, v2) == "deploying"
    # A version that never activates changes nothing.
    assert server.ok("GET", "/v1/deployments/svc/functions/f", token=token)["id"] == f1
    activated = server.ok("POST", "/v1/deployments/svc/activate", token=token, json={"app_id": v2})
    # The same activation sent again (its answer was lost): the same answer, not a 409 that
    # failed a deploy that had succeeded.
    again = server.ok("POST", "/v1/deployments/svc/activate", token=token, json={"app_id": v2})
    assert again == activated
    f2 = server.ok("GET", "/v1/deployments/svc/functions/f", token=token)["id"]
    assert f2 != f1 and _app_state(server, v1) == "retiring"

    # A handle on the old version's function now reaches the new version.
    [new_call] = server.new_calls(token, f1)
    with server.state.engine.connect() as conn:
        assert (
            conn.execute(select(calls.c.function_id).where(calls.c.id == new_call)).scalar() == f2
        )
        # The call the old version already had stays with it (queued, not failed).
        assert (
            conn.execute(select(calls.c.state).where(calls.c.id == old_call)).scalar() == "queued"
        )
    with server.state.engine.begin() as conn:
        assert retire_drained_versions(conn, 0) == []  # it still has a call
        conn.execute(calls.update().where(calls.c.id == old_call).values(state="succeeded"))
        assert retire_drained_versions(conn, 0) == [v1]
    assert _app_state(server, v1) == "stopped"

    # Rollback re-activates version 1; version 2 retires.
    info = server.ok("POST", "/v1/deployments/svc/rollback", token=token, json={"version": 1})
    assert (info["version"], info["app_id"]) == (1, v1)
    assert [v["state"] for v in info["versions"]] == ["running", "retiring"]
    # The same rollback sent again (its answer was lost): the same answer, not a 409 that
    # failed a rollback that had taken effect.
    again = server.ok("POST", "/v1/deployments/svc/rollback", token=token, json={"version": 1})
    assert again == info
    r = server.request("POST", "/v1/deployments/svc/rollback", token=token, json={"version": 9})
    assert r.status_code == 404

    info = server.ok("POST", "/v1/deployments/svc/stop", token=token)
    assert info["state"] == "stopped"
    assert {v["state"] for v in info["versions"]} == {"stopped"}
    r = server.request("GET", "/v1/deployments/svc/functions/f", token=token)
    assert r.status_code == 404 and "is stopped" in r.text
    r = server.request(
        "POST", f"/v1/functions/{f1}/calls", token=token, json={"inputs": [{"args": {"data": ""}}]}
    )
    assert r.status_code == 404 and "stopped app" in r.text


def test_deployments_are_per_account_and_checked(server: ServerUnderTest) -> None:
    alice = server.tenant("alice").token
    bob = server.tenant("bob").token
    v1, _ = _version(server, alice)
    server.ok("POST", "/v1/deployments/svc/activate", token=alice, json={"app_id": v1})
    assert server.ok("GET", "/v1/deployments", token=bob) == []
    for method, path, body in [
        ("GET", "/v1/deployments/svc", None),
        ("GET", "/v1/deployments/svc/functions/f", None),
        ("POST", "/v1/deployments/svc/stop", None),
        ("POST", "/v1/deployments/svc/activate", {"app_id": v1}),
        ("POST", "/v1/deployments/svc/rollback", {"version": 1}),
    ]:
        r = server.request(method, path, token=bob, json=body)
        assert r.status_code == 404 and error_code(r) == "not_found", (method, path)
    # Bob's own deployment of the same name is his: another app id.
    b1, _ = _version(server, bob)
    r = server.request("POST", "/v1/deployments/svc/activate", token=bob, json={"app_id": v1})
    assert r.status_code == 404
    server.ok("POST", "/v1/deployments/svc/activate", token=bob, json={"app_id": b1})
    # Activating the current version again answers it (a retry); a version without
    # functions is refused clearly.
    r = server.request("POST", "/v1/deployments/svc/activate", token=bob, json={"app_id": b1})
    assert r.status_code == 200 and r.json()["app_id"] == b1
    empty = server.ok("POST", "/v1/deployments", token=bob, json={"name": "svc"})
    r = server.request(
        "POST", "/v1/deployments/svc/activate", token=bob, json={"app_id": empty["app_id"]}
    )
    assert r.status_code == 400 and "no functions" in r.text
    r = server.request("POST", "/v1/deployments", token=bob, json={"name": "bad name!"})
    assert r.status_code == 400


def test_the_app_serving_a_deployment_is_stopped_through_the_deployment(
    server: ServerUnderTest,
) -> None:
    # `crucible apps stop` on a deployment's app left it "running" with a stopped version:
    # every call then failed with "belongs to a stopped app; start a new run".
    token = server.tenant("alice").token
    v1, _ = _version(server, token)
    server.ok("POST", "/v1/deployments/svc/activate", token=token, json={"app_id": v1})
    r = server.request("POST", f"/v1/apps/{v1}/stop", token=token)
    assert r.status_code == 409 and error_code(r) == "conflict"
    assert "crucible deployments stop svc" in r.text, r.text
    assert _app_state(server, v1) == "running"
    server.ok("POST", "/v1/deployments/svc/stop", token=token)
    assert server.ok("POST", f"/v1/apps/{v1}/stop", token=token)["state"] == "stopped"


def test_the_job_api_refuses_what_a_job_cannot_call(server: ServerUnderTest) -> None:
    """A web endpoint, a class or a generator was queued, run in a container and failed with
    the worker's traceback; each is refused at once, saying how to call it."""
    token = server.tenant("alice").token
    started = server.ok("POST", "/v1/deployments", token=token, json={"name": "kinds"})
    bundle = server.put_blob(token)
    code = {"bundle": bundle, "module": "m", "qualname": "f"}
    specs = [
        {"name": "page", "code": code, "web": {"kind": "fastapi_endpoint", "method": "POST"}},
        {"name": "Model", "code": code, "class_params": {}},
        {"name": "gen", "code": code, "is_generator": True},
        {"name": "plain", "code": code},
    ]
    server.ok(
        "POST", f"/v1/apps/{started['app_id']}/functions", token=token, json={"functions": specs}
    )
    server.ok(
        "POST", "/v1/deployments/kinds/activate", token=token, json={"app_id": started["app_id"]}
    )
    for name, words in (
        ("page", "is a web endpoint: call it over HTTP at /web/ACCOUNT/kinds/page/"),
        ("Model", "Cls.from_name('kinds', 'Model')"),
        ("gen", ".remote_gen("),
    ):
        for route in ("run", "runsync"):
            r = server.request(
                "POST", f"/v1/jobs/kinds/{name}/{route}", token=token, json={"input": 3}
            )
            assert r.status_code == 400 and error_code(r) == "invalid_request", r.text
            assert words in r.json()["error"]["message"], r.text
    with server.state.engine.connect() as conn:
        assert conn.execute(select(calls.c.id)).all() == []  # nothing was queued
    assert server.ok("POST", "/v1/jobs/kinds/plain/run", token=token, json={"input": 3})["id"]


def test_a_version_left_deploying_is_stopped_after_an_hour(server: ServerUnderTest) -> None:
    """A deploy interrupted before its activation left its version "deploying" for good."""
    alice = server.tenant("alice")
    started = server.ok("POST", "/v1/deployments", token=alice.token, json={"name": "svc"})
    now = int(time.time() * 1000)
    with server.state.engine.begin() as conn:
        assert stop_abandoned_apps(conn, now + 60_000, 60_000) == []  # a deploy in progress
        assert stop_abandoned_apps(conn, now + 3_700_000, 60_000) == [started["app_id"]]
    [version] = server.ok("GET", "/v1/deployments/svc", token=alice.token)["versions"]
    assert version["state"] == "stopped"
