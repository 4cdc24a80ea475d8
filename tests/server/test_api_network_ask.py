"""A function's ``network=`` on the wire: allowlists are checked and normalized by the server
too (a client other than the SDK gets a clear 400, never a 500), and containers carry them."""

from __future__ import annotations

from typing import Any

import pytest

from server_testlib import ServerUnderTest, error_code


def _create(server: ServerUnderTest, token: str, network: Any) -> Any:
    app_id = server.new_app(token, "net")
    code = {"bundle": server.put_blob(token), "module": "m", "qualname": "f"}
    return server.request(
        "POST",
        f"/v1/apps/{app_id}/functions",
        token=token,
        json={"functions": [{"name": "f", "code": code, "network": network}]},
    )


@pytest.mark.parametrize(
    "network",
    [
        "yes",
        1,
        None,
        [],
        ["pypi.org"],
        ["127.0.0.1:80"],
        ["169.254.169.254:80"],
        ["localhost:8000"],
        ["pypi.org:0"],
        [5],
        ["[::1]:443"],
        [f"h{i}.example.org:443" for i in range(65)],
    ],
)
def test_bad_network_asks_are_400_naming_the_problem(server: ServerUnderTest, network: Any) -> None:
    token = server.tenant("alice").token
    r = _create(server, token, network)
    assert r.status_code == 400, r.text
    assert error_code(r) == "invalid_request"
    assert "network" in r.text


def test_an_allowlist_is_stored_normalized(server: ServerUnderTest) -> None:
    token = server.tenant("bob").token
    r = _create(server, token, ["PyPI.org:443", "10.1.2.0/24:5432", "pypi.org:443"])
    assert r.status_code in (200, 201), r.text
    [made] = r.json()  # a FunctionInfo: the spec as stored
    assert made["network"] == ["10.1.2.0/24:5432", "pypi.org:443"]
