"""A newcomer's typo in a path: the 404 names the route that does not exist and where the
routes are, instead of a bare "Not Found"; under /openai/ it is OpenAI's "Invalid URL", not
a model that does not exist (model_not_found sent its clients looking for a model)."""

from __future__ import annotations

from server_testlib import ServerUnderTest


def test_an_unknown_route_is_named_with_where_the_routes_are(server: ServerUnderTest) -> None:
    alice = server.tenant("alice").token
    r = server.request("GET", "/v1/aps", token=alice)
    assert r.status_code == 404, r.text
    error = r.json()["error"]
    assert error["code"] == "not_found"
    assert "GET /v1/aps" in error["message"] and "docs/reference/api.md" in error["message"]
    # A route that exists and finds nothing still says what it did not find.
    r = server.request("GET", "/v1/apps/ap-missing", token=alice)
    assert r.status_code == 404 and "no route" not in r.json()["error"]["message"], r.text


def test_an_unknown_openai_path_is_an_invalid_url_not_a_missing_model(
    server: ServerUnderTest,
) -> None:
    alice = server.tenant("alice").token
    r = server.request("POST", "/openai/v1/chat/complete", token=alice, json={"model": "m"})
    assert r.status_code == 404, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] is None
    assert "Invalid URL (POST /openai/v1/chat/complete)" in error["message"]
    # A missing model is still model_not_found.
    r = server.request("GET", "/openai/v1/models/nope", token=alice)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
