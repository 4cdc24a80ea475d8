"""Numbers too large for the store, and values of the wrong type, get 400 with the error
shape, never 500 (the review's four: a rollback ``version``, ``after=`` of logs and items, a
log line's ``ts_ms``), on every route: the test walks the OpenAPI description for every
integer parameter."""

from __future__ import annotations

from typing import Any

import pytest

from crucible.protocol.accounts import Scope

from server_testlib import ServerUnderTest, error_code

HUGE = 4044529794927446458368  # the review's rollback version


class Seeded:
    def __init__(self, server: ServerUnderTest) -> None:
        self.server = server
        self.admin = server.tenant("ops", Scope.ADMIN).token
        self.user = server.tenant("alice").token
        self.host = server.tenant("alice", Scope.HOST).token
        self.app_id = server.new_app(self.user)
        self.fn = server.new_function(self.user, self.app_id, server.put_blob(self.user))
        self.host_id = server.register_host(self.host)
        self.container, self.ctoken = server.place_container(self.fn, self.host_id)
        [self.call] = server.new_calls(self.user, self.fn)

    def token_for(self, path: str) -> str:
        # The worker's routes take its container token; a container's port links are a builder's.
        if path.startswith("/v1/containers/") and "/ports/" not in path:
            return self.ctoken
        return self.admin


def expect_400(r: Any, *words: str) -> None:
    assert r.status_code == 400, (r.request.method, r.request.url, r.status_code, r.text)
    assert error_code(r) == "invalid_request"
    for word in words:
        assert word in r.json()["error"]["message"], r.text


def test_the_four_overflows_the_review_found_answer_400(server: ServerUnderTest) -> None:
    s = Seeded(server)
    r = server.request("POST", "/v1/deployments/svc/rollback", token=s.user, json={"version": HUGE})
    expect_400(r, "version")
    expect_400(server.request("GET", f"/v1/apps/{s.app_id}/logs?after={HUGE}", token=s.user))
    expect_400(server.request("GET", f"/v1/calls/{s.call}/items?after={HUGE}", token=s.user))
    r = server.request(
        "POST",
        f"/v1/containers/{s.container}/logs",
        token=s.ctoken,
        json={"lines": [{"ts_ms": HUGE, "stream": "stdout", "text": "hi"}]},
    )
    expect_400(r, "ts_ms")


def test_loose_types_the_review_found_answer_400(server: ServerUnderTest) -> None:
    s = Seeded(server)
    # {"cap_micros": false} used to set a $0 daily cap.
    r = server.request("PUT", "/v1/credits/cap", token=s.user, json={"cap_micros": False})
    expect_400(r, "cap_micros")
    # {"ephemeral": 0} was read as false.
    r = server.request("POST", "/v1/apps", token=s.user, json={"name": "x", "ephemeral": 0})
    expect_400(r, "ephemeral")
    r = server.request("POST", "/v1/apps", token=s.user, json={"name": "x", "ephemeral": "true"})
    expect_400(r, "ephemeral")
    r = server.request(
        "POST", f"/v1/functions/{s.fn}/calls", token=s.user, json={"inputs": [], "wait_s": True}
    )
    assert r.status_code == 400
    r = server.request(
        "POST",
        "/v1/market/quote",
        token=s.user,
        json={"gpu": "H100", "nodes": "1"},
    )
    expect_400(r, "nodes")
    # A JSON job input with an integer no store holds.
    r = server.request("POST", "/v1/jobs/svc/f/run", token=s.user, json={"input": HUGE})
    expect_400(r, "input")


def _integer_parameters(server: ServerUnderTest) -> list[tuple[str, str, str, str]]:
    spec = server.app.openapi()
    out = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for p in op.get("parameters", []):
                schema = p.get("schema", {})
                types = {schema.get("type")} | {s.get("type") for s in schema.get("anyOf", [])}
                if "integer" in types:
                    out.append((method.upper(), path, p["in"], p["name"]))
    return out


def test_every_integer_parameter_of_every_route_is_bounded(server: ServerUnderTest) -> None:
    s = Seeded(server)
    params = _integer_parameters(server)
    assert ("GET", "/v1/apps/{app_id}/logs", "query", "after") in params
    for method, template, where, name in params:
        spec_param = next(
            p
            for p in server.app.openapi()["paths"][template][method.lower()]["parameters"]
            if p["name"] == name
        )
        assert "maximum" in str(spec_param["schema"]), (template, name, spec_param)
        path = (
            template.replace("{app_id}", s.app_id)
            .replace("{call_id}", s.call)
            .replace("{container_id}", s.container)
            .replace("{function_id}", s.fn)
            .replace("{host_id}", s.host_id)
        )
        for bad in (HUGE, -HUGE, "1.5", "true"):
            if where == "path":
                url = path.replace("{" + name + "}", str(bad))
                params_: dict[str, Any] = {}
            else:
                url, params_ = path, {name: str(bad)}
            kw: dict[str, Any] = {"params": params_}
            if method in ("POST", "PUT", "PATCH"):
                kw["json"] = {}
            r = server.request(method, url, token=s.token_for(url), **kw)
            assert r.status_code == 400, (method, url, name, bad, r.status_code, r.text)
            error_code(r)


@pytest.mark.parametrize("bad", [HUGE, -HUGE, 2**63])
def test_overflowing_integers_in_bodies_never_reach_the_store(
    server: ServerUnderTest, bad: int
) -> None:
    s = Seeded(server)
    for method, path, body in (
        ("POST", "/v1/market/quote", {"gpu": "H100", "max_price_micros": bad}),
        ("POST", "/v1/reservations", {"gpu": "H100", "start_ms": bad, "hours": 1}),
        ("POST", "/v1/credits/grants", {"account": "alice", "amount_micros": bad, "key": "k"}),
        ("POST", f"/v1/hosts/{s.host_id}/sync", {"seq": bad}),
    ):
        r = server.request(method, path, token=s.admin, json=body)
        assert r.status_code == 400, (path, r.status_code, r.text)
        error_code(r)


def test_a_wait_that_is_not_a_number_is_named_as_such(server: ServerUnderTest) -> None:
    # `?wait_s=nan` said "Input should be less than or equal to 60".
    token = server.tenant("alice").token
    r = server.request("GET", "/v1/calls/ca-x?wait_s=nan", token=token)
    assert r.status_code == 400 and "finite number" in r.text, r.text


def test_a_json_body_sent_as_text_is_told_to_be_json(server: ServerUnderTest) -> None:
    # It said "body: Input should be a valid dictionary", hiding the content type.
    token = server.tenant("alice").token
    r = server.request(
        "POST",
        "/v1/dicts",
        token=token,
        content=b'{"name": "d1"}',
        headers={"Content-Type": "text/plain"},
    )
    assert r.status_code == 400, r.text
    assert "Content-Type: application/json, not text/plain" in r.text, r.text
