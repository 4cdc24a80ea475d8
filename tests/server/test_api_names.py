"""Strings one account chooses and others see (host names, regions, energy sources, GPU
models, app / deployment / function / account names) are checked at the API: a terminal
escape or any other control character gets a clear 400, never a place in another account's
``crucible hosts``. (The review saw a clear-screen reach a terminal through a host name.)"""

from __future__ import annotations

import json
from typing import Any

import pytest

from crucible.protocol.accounts import Scope

from server_testlib import ServerUnderTest, error_code

CLEAR = "evil\x1b[2J\x1b[H"
BAD = [CLEAR, "two\nlines", "bell\x07", "rtl\u202eexe.txt", "nul\x00", "", "x" * 200]


def _register(server: ServerUnderTest, token: str, **body: Any) -> Any:
    inv = {"cpu_cores": 8, "memory_mib": 16384, "disk_mib": 0}
    return server.request(
        "POST",
        "/v1/hosts/register",
        token=token,
        json={"name": "ok-host", "inventory": inv, **body},
    )


def _expect_400(r: Any, field: str) -> None:
    assert r.status_code == 400, (r.status_code, r.text)
    assert error_code(r) == "invalid_request"
    assert field in r.json()["error"]["message"], r.text


@pytest.mark.parametrize("bad", BAD)
def test_host_names_regions_and_energy_sources_must_be_names(
    server: ServerUnderTest, bad: str
) -> None:
    host = server.tenant("hoster", Scope.HOST).token
    _expect_400(_register(server, host, name=bad), "name")
    _expect_400(_register(server, host, region=bad), "region")
    if bad:  # an empty energy source is refused too, with the length message
        _expect_400(_register(server, host, energy_source=bad), "energy_source")
    gpu = {"index": 0, "model": bad or "x\x1b", "memory_mib": 1, "uuid": "GPU-0", "fake": True}
    inv = {"cpu_cores": 8, "memory_mib": 16384, "disk_mib": 0, "gpus": [gpu]}
    r = server.request(
        "POST", "/v1/hosts/register", token=host, json={"name": "h", "inventory": inv}
    )
    assert r.status_code == 400 and "model" in r.text
    # Nothing was registered, and nobody sees the string.
    user = server.tenant("someone").token
    assert server.ok("GET", "/v1/hosts", token=user) == []


def test_a_control_character_is_named_in_the_message(server: ServerUnderTest) -> None:
    host = server.tenant("hoster", Scope.HOST).token
    r = _register(server, host, name=CLEAR)
    message = r.json()["error"]["message"]
    assert "U+001B" in message and "letters, digits" in message
    assert "\x1b" not in r.text  # the answer itself carries no raw escape


def test_good_names_are_accepted_and_profiles_are_checked_too(server: ServerUnderTest) -> None:
    host = server.tenant("hoster", Scope.HOST).token
    r = _register(
        server, host, name="gpu-box.lab_2", region="eu-west-1", energy_source="wind + hydro"
    )
    assert r.status_code == 200, r.text
    owner = server.tenant("hoster").token
    r = server.request(
        "PATCH", f"/v1/hosts/{r.json()['id']}/profile", token=owner, json={"energy_source": CLEAR}
    )
    _expect_400(r, "energy_source")


@pytest.mark.parametrize("bad", [CLEAR, "rtl\u202e", "a b"])
def test_names_of_accounts_apps_deployments_and_functions(
    server: ServerUnderTest, bad: str
) -> None:
    admin = server.tenant("ops", Scope.ADMIN).token
    user = server.tenant("alice").token
    _expect_400(server.request("POST", "/v1/accounts", token=admin, json={"name": bad}), "name")
    _expect_400(server.request("POST", "/v1/apps", token=user, json={"name": bad}), "name")
    _expect_400(server.request("POST", "/v1/deployments", token=user, json={"name": bad}), "name")
    app_id = server.new_app(user)
    bundle = server.put_blob(user)
    spec = {"name": bad, "code": {"bundle": bundle, "module": "m", "qualname": "f"}}
    r = server.request(
        "POST", f"/v1/apps/{app_id}/functions", token=user, json={"functions": [spec]}
    )
    _expect_400(r, "name")
    r = server.request("POST", "/v1/tokens", token=user, json={"name": "t\x1b[31m"})
    _expect_400(r, "name")


def test_a_hosts_isolation_problems_and_self_test_are_text_others_can_print(
    server: ServerUnderTest,
) -> None:
    # A host's isolation problems and self-test results reach every tenant (`crucible hosts`,
    # `crucible market hosts`): a title-setting, screen-clearing error went through as is.
    host = server.tenant("hoster", Scope.HOST).token
    cpu = {"kind": "cpu", "model": "cpu", "measured_ms": 1}
    for bad, field in (
        ({"model": "cpu\x1b[5m"}, "model"),
        ({"figures": {"\x1b[31mkey": 1.0}}, "figures"),
        ({"figures": {"cores": 1e308}}, "figures.cores"),
    ):
        r = _register(server, host, self_test=[cpu | bad])
        _expect_400(r, field)
    # Diagnostics the agent writes (which may quote a tool's output): their control
    # characters become spaces.
    evil = "\x1b]0;pwned\x07\x1b[2J<script>x</script>\u202e"
    isolation = {"runtime": "bwrap", "problems": [f"no seccomp: {evil}"]}
    made = _register(server, host, isolation=isolation, self_test=[cpu | {"error": evil}])
    assert made.status_code == 200, made.text
    user = server.tenant("someone").token
    [seen] = server.ok("GET", "/v1/hosts", token=user)
    shown = json.dumps(seen, ensure_ascii=False)
    assert "pwned" in shown and "no seccomp" in shown
    assert not any(c in shown for c in "\x1b\x07\u202e"), shown
    assert "<script>x</script>" in seen["verification"]["reason"]  # text, escaped in HTML
