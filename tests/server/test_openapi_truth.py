"""The OpenAPI description tells the truth: no framework 422 (the server answers 400), the
errors each route can answer with the one error shape, and 405 answers carry ``Allow``."""

from __future__ import annotations

from crucible.protocol.accounts import Scope

from server_testlib import ServerUnderTest, error_code


def test_the_description_lists_the_real_errors_and_no_422(server: ServerUnderTest) -> None:
    admin = server.tenant("ops", Scope.ADMIN).token
    spec = server.ok("GET", "/openapi.json", token=admin)
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            responses = op["responses"]
            if path == "/healthz":
                continue
            if (method, path) != ("post", "/v1/reservations"):
                assert "422" not in responses, (method, path)  # only a market refusal is 422
            for status in ("400", "401", "403", "404", "409", "429"):
                ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/Error", (method, path, status)
            assert ("413" in responses) == ("requestBody" in op), (method, path)
    # The hot routes (served by server/hotpath.py) are described like the rest.
    hot = spec["paths"]["/v1/functions/{function_id}/calls"]["post"]["responses"]
    assert {"201", "400", "401", "402", "403", "404", "413", "429"} <= set(hot)
    assert "422" in spec["paths"]["/v1/reservations"]["post"]["responses"]


def test_a_malformed_request_answers_what_the_description_says(server: ServerUnderTest) -> None:
    user = server.tenant("alice").token
    r = server.request("POST", "/v1/apps", token=user, json={"name": 5})
    assert r.status_code == 400 and error_code(r) == "invalid_request"


def test_405_lists_every_method_of_the_path_in_allow(server: ServerUnderTest) -> None:
    user = server.tenant("alice").token
    r = server.request("DELETE", "/v1/apps", token=user)
    assert r.status_code == 405 and error_code(r) == "method_not_allowed"
    assert r.headers["allow"] == "GET, POST"  # two routes share the path
    assert "GET, POST" in r.json()["error"]["message"]
    # A hot route (POST only) too.
    r = server.request("GET", "/v1/functions/fn-1/calls", token=user)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    error_code(r)
