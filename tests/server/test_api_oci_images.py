"""OCI images on the server's side, in-process: the registry credentials a container's agent
reads, and a container whose image did not pull (never started: its function's queued calls
fail with the image's code, nothing is metered)."""

from __future__ import annotations

from sqlalchemy import select

from crucible.protocol.accounts import Scope
from crucible.protocol.images import ImageSpec
from crucible.server.store.tables import containers

from server_testlib import ServerUnderTest, error_code

PASSWORD = "reg-pw-9c1e"


def test_registry_auth_is_the_images_secret_only(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    host = server.tenant("alice", Scope.HOST)
    values = {"REGISTRY_USERNAME": "alice", "REGISTRY_PASSWORD": PASSWORD, "OTHER": "x"}
    server.ok("POST", "/v1/secrets", token=alice.token, json={"name": "reg", "values": values})
    bundle = server.put_blob(alice.token)
    app_id = server.new_app(alice.token)
    image = ImageSpec(registry="127.0.0.1:5000/team/app:1", registry_secret="reg")
    fid = server.new_function(alice.token, app_id, bundle, image=image.model_dump(mode="json"))
    host_id = server.register_host(host.token)
    cid, ctok = server.place_container(fid, host_id)
    got = server.ok("GET", f"/v1/containers/{cid}/registry-auth", token=ctok)
    assert got == {"env": {"REGISTRY_USERNAME": "alice", "REGISTRY_PASSWORD": PASSWORD}}
    # the builder's own token does not read it back; the function's secrets do not include it
    r = server.request("GET", f"/v1/containers/{cid}/registry-auth", token=alice.token)
    assert r.status_code == 403
    assert server.ok("GET", f"/v1/containers/{cid}/secrets", token=ctok) == {"env": {}}
    # a secret deleted since: a clear 404 naming how to create it
    server.ok("DELETE", "/v1/secrets/reg", token=alice.token)
    r = server.request("GET", f"/v1/containers/{cid}/registry-auth", token=ctok)
    assert r.status_code == 404 and "crucible secret create reg" in r.json()["error"]["message"]
    # an image without a secret: nothing
    plain = ImageSpec(registry="python:3.12-slim")
    fid2 = server.new_function(alice.token, app_id, bundle, image=plain.model_dump(mode="json"))
    cid2, ctok2 = server.place_container(fid2, host_id)
    assert server.ok("GET", f"/v1/containers/{cid2}/registry-auth", token=ctok2) == {"env": {}}


def test_image_failed_fails_queued_calls_and_charges_nothing(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    host = server.tenant("alice", Scope.HOST)
    bundle = server.put_blob(alice.token)
    app_id = server.new_app(alice.token)
    image = ImageSpec(registry="127.0.0.1:5000/team/app:nope")
    fid = server.new_function(alice.token, app_id, bundle, image=image.model_dump(mode="json"))
    calls = server.new_calls(alice.token, fid, n=3)
    host_id = server.register_host(host.token)
    cid, _ = server.place_container(fid, host_id)
    report = {
        "container_id": cid,
        "state": "exited",
        "reason": "image_failed",
        "error_code": "image_not_found",
        "message": "image 127.0.0.1:5000/team/app:nope: the registry has no manifest 'nope'",
    }
    server.ok("POST", f"/v1/hosts/{host_id}/sync", token=host.token, json={"containers": [report]})
    for call_id in calls:
        info = server.ok("GET", f"/v1/calls/{call_id}", token=alice.token)
        assert info["state"] == "failed"
        assert info["error"]["code"] == "image_not_found"
        assert "no manifest 'nope'" in info["error"]["message"]
    with server.state.engine.connect() as conn:
        row = conn.execute(
            select(containers.c.state, containers.c.started_ms).where(containers.c.id == cid)
        ).one()
    assert row.state == "stopped" and row.started_ms is None
    assert server.ok("GET", "/v1/bill", token=alice.token)["total_micros"] == 0
    # a host cannot make up other codes: the report is refused
    bad = dict(report, error_code="internal")
    r = server.request(
        "POST", f"/v1/hosts/{host_id}/sync", token=host.token, json={"containers": [bad]}
    )
    assert r.status_code == 400 and error_code(r) == "invalid_request"


def test_a_host_cannot_fail_a_functions_calls_by_saying_its_image_failed(
    server: ServerUnderTest,
) -> None:
    """Only a pending container of a function with an image can have failed its pull: said of
    a running container, or of a function without an image, it is that container's crash
    (its calls are retried as for any crash; the queued ones stay queued), and the agent's
    words reach the renter without their control characters."""
    alice = server.tenant("alice")
    host = server.tenant("evil", Scope.HOST)
    bundle = server.put_blob(alice.token)
    fid = server.new_function(alice.token, server.new_app(alice.token), bundle)  # no image
    calls = server.new_calls(alice.token, fid, n=3)
    host_id = server.register_host(host.token)
    for started in (False, True):
        cid, _ = server.place_container(fid, host_id)
        sync = f"/v1/hosts/{host_id}/sync"
        if started:
            running = {"container_id": cid, "state": "running"}
            server.ok("POST", sync, token=host.token, json={"containers": [running]})
        report = {
            "container_id": cid,
            "state": "exited",
            "exit_code": 1,
            "reason": "image_failed",
            "error_code": "image_not_found",
            "message": "\x1b[2J\x1b[31mYOUR ACCOUNT IS SUSPENDED\x1b[0m",
        }
        server.ok("POST", sync, token=host.token, json={"containers": [report]})
        for call_id in calls:
            info = server.ok("GET", f"/v1/calls/{call_id}", token=alice.token)
            assert info["state"] == "queued", info
        with server.state.engine.connect() as conn:
            row = conn.execute(
                select(
                    containers.c.state, containers.c.exit_reason, containers.c.exit_message
                ).where(containers.c.id == cid)
            ).one()
        assert (row.state, row.exit_reason) == ("stopped", "exited")
        assert "\x1b" not in row.exit_message and "YOUR ACCOUNT IS SUSPENDED" in row.exit_message
