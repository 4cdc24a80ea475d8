"""Pools of a deployed @app.cls() class's parameter sets, made by the server from the class's
deployed function: canonical parameters, clear refusals, the cap, tenancy, idempotence, and
what a redeploy does to them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from crucible.protocol.classes import ClassSpec, canonical_params, pool_name
from crucible.server.store.tables import calls, functions

from server_testlib import ServerUnderTest, error_code

POOLS = "/v1/deployments/svc/functions/Model/pools"
SPEC = {
    "params": [
        {"name": "size", "default": "small"},
        {"name": "scale", "default": 1},
        {"name": "shape", "default_in_code": True},
    ],
    "methods": ["predict"],
}


def _deploy(server: ServerUnderTest, token: str, **class_fields: Any) -> str:
    """A version of deployment ``svc`` with class ``Model`` (its default pool), activated."""
    started = server.ok("POST", "/v1/deployments", token=token, json={"name": "svc"})
    bundle = server.put_blob(token)
    spec = {
        "name": "Model",
        "code": {"bundle": bundle, "module": "m", "qualname": "Model"},
        "class_params": {"size": "small", "scale": 1},
        "class_spec": SPEC,
        **class_fields,
    }
    app_id = str(started["app_id"])
    server.ok("POST", f"/v1/apps/{app_id}/functions", token=token, json={"functions": [spec]})
    server.ok("POST", "/v1/deployments/svc/activate", token=token, json={"app_id": app_id})
    return app_id


def _pool(server: ServerUnderTest, token: str, **params: Any) -> Any:
    return server.ok("POST", POOLS, token=token, json={"params": params})


def test_any_parameters_get_a_pool_made_from_the_class(server: ServerUnderTest) -> None:
    token = server.tenant("alice").token
    app_id = _deploy(server, token, min_containers=1, timeout_s=42.0)
    default = server.ok("GET", "/v1/deployments/svc/functions/Model", token=token)
    # The default parameters, given or not, are the class's own function.
    assert _pool(server, token)["id"] == default["id"]
    assert _pool(server, token, size="small")["id"] == default["id"]
    assert _pool(server, token, scale=1, size="small")["id"] == default["id"]

    large = _pool(server, token, size="large")
    assert large["id"] != default["id"] and large["app_id"] == app_id
    spec = ClassSpec.model_validate(SPEC)
    assert large["name"] == pool_name("Model", spec, large["class_params"])
    # Canonical: the defaults applied; the default that JSON cannot carry left to the code.
    assert large["class_params"] == {"size": "large", "scale": 1}
    # Made from the class: its code, resources, scaling and spec.
    assert (large["kind"], large["timeout_s"], large["min_containers"]) == ("class", 42.0, 1)
    assert large["code"] == default["code"] and large["class_spec"] == default["class_spec"]
    # Asked again (or with the defaults spelled out): the same pool, not another.
    assert _pool(server, token, size="large", scale=1)["id"] == large["id"]
    assert _pool(server, token, size="large", shape=[1, 2])["id"] != large["id"]
    # 1 and 1.0 are different JSON parameters (a float reached the code as an int).
    assert _pool(server, token, scale=1.0)["id"] != default["id"]
    with server.state.engine.connect() as conn:
        names = conn.execute(select(functions.c.name).where(functions.c.app_id == app_id)).all()
    assert len(names) == 4


def test_bad_parameters_are_refused_clearly(server: ServerUnderTest) -> None:
    token = server.tenant("alice").token
    _deploy(server, token)
    r = server.request("POST", POOLS, token=token, json={"params": {"colour": "red"}})
    assert r.status_code == 400 and error_code(r) == "invalid_request", r.text
    assert "unexpected parameter(s) 'colour'; it takes size, scale, shape" in r.text
    # A parameter set is stored with its pool: data belongs in a method's arguments.
    big = {"params": {"size": "x" * 70_000}}
    r = server.request("POST", POOLS, token=token, json=big)
    assert r.status_code == 400 and "bytes as JSON; at most 65,536" in r.text, r.text
    # Not a class, or no such function: said so.
    bundle = server.put_blob(token)
    started = server.ok("POST", "/v1/deployments", token=token, json={"name": "plain"})
    fn = {"name": "f", "code": {"bundle": bundle, "module": "m", "qualname": "f"}}
    server.ok(
        "POST", f"/v1/apps/{started['app_id']}/functions", token=token, json={"functions": [fn]}
    )
    server.ok(
        "POST", "/v1/deployments/plain/activate", token=token, json={"app_id": started["app_id"]}
    )
    r = server.request(
        "POST", "/v1/deployments/plain/functions/f/pools", token=token, json={"params": {}}
    )
    assert r.status_code == 400 and "not an @app.cls() class" in r.text, r.text
    r = server.request(
        "POST", "/v1/deployments/svc/functions/Nope/pools", token=token, json={"params": {}}
    )
    assert r.status_code == 404, r.text


def test_required_parameters_have_no_default_pool(server: ServerUnderTest) -> None:
    token = server.tenant("alice").token
    spec = {"params": [{"name": "name", "required": True}], "methods": ["hello"]}
    # A class with required parameters is deployed with incomplete parameters: it keeps no
    # containers of its own, its pools do.
    app_id = _deploy(server, token, class_params={}, class_spec=spec, min_containers=2)
    with server.state.engine.connect() as conn:
        warm = dict(conn.execute(select(functions.c.name, functions.c.warm)).all())
    assert warm == {"Model": False}
    r = server.request("POST", POOLS, token=token, json={"params": {}})
    assert r.status_code == 400 and "missing required parameter(s) 'name'" in r.text, r.text
    ada = _pool(server, token, name="ada")
    assert ada["name"].startswith("Model.p-") and ada["class_params"] == {"name": "ada"}
    with server.state.engine.connect() as conn:
        warm = dict(
            conn.execute(
                select(functions.c.name, functions.c.warm).where(functions.c.app_id == app_id)
            ).all()
        )
    assert warm == {"Model": False, ada["name"]: True}


def test_pools_per_class_are_capped(make_server: Callable[..., ServerUnderTest]) -> None:
    server = make_server(max_class_pools=2)
    token = server.tenant("alice").token
    _deploy(server, token)
    _pool(server, token, size="a")
    _pool(server, token, size="b")
    _pool(server, token)  # the default pool is the class's own: not counted
    _pool(server, token, size="a")  # an existing pool is found, not made
    r = server.request("POST", POOLS, token=token, json={"params": {"size": "c"}})
    assert r.status_code == 413 and error_code(r) == "quota_exceeded", r.text
    assert "CRUCIBLE_MAX_CLASS_POOLS=2" in r.text
    # A pool's own pools would each have a fresh allowance (probe3 F1): refused.
    pool = _pool(server, token, size="a")["name"]
    r = server.request(
        "POST",
        f"/v1/deployments/svc/functions/{pool}/pools",
        token=token,
        json={"params": {"size": "d"}},
    )
    assert r.status_code == 400 and "is a pool of the class Model" in r.text, r.text


def test_another_tenant_cannot_make_pools(server: ServerUnderTest) -> None:
    alice = server.tenant("alice").token
    _deploy(server, alice)
    mallory = server.tenant("mallory").token
    r = server.request("POST", POOLS, token=mallory, json={"params": {"size": "huge"}})
    assert r.status_code == 404 and "no deployment named 'svc'" in r.text, r.text
    with server.state.engine.connect() as conn:
        assert conn.execute(select(functions.c.name)).scalars().all() == ["Model"]


def test_a_redeploy_moves_calls_to_the_new_versions_pool(server: ServerUnderTest) -> None:
    token = server.tenant("alice").token
    _deploy(server, token)
    old = _pool(server, token, size="large")
    v2 = _deploy(server, token, timeout_s=7.0)
    # A handle on the old version's pool: its calls go to the same parameters' pool of the
    # current version, made then from the new class.
    [call] = server.new_calls(token, old["id"])
    new = _pool(server, token, size="large")
    assert new["app_id"] == v2 and new["id"] != old["id"] and new["timeout_s"] == 7.0
    with server.state.engine.connect() as conn:
        assert (
            conn.execute(select(calls.c.function_id).where(calls.c.id == call)).scalar()
            == (new["id"])
        )
    # A new version whose class no longer takes the parameters: the call is refused, naming it.
    narrow = {"params": [{"name": "scale", "default": 1}], "methods": ["predict"]}
    _deploy(server, token, class_params={"scale": 1}, class_spec=narrow)
    r = server.request(
        "POST",
        f"/v1/functions/{old['id']}/calls",
        token=token,
        json={"inputs": [{"args": {"data": "gAQ="}}]},
    )
    assert r.status_code == 400 and "unexpected parameter(s) 'size'" in r.text, r.text


def test_a_redeploy_keeps_a_handles_values_not_the_new_defaults(server: ServerUnderTest) -> None:
    """probe3 F3, F4: a handle on the old default pool went to the new version's default
    (forwarded by name: its values changed under it), and one whose pool carried an old
    default the new class no longer takes was refused for a parameter nobody passed."""
    token = server.tenant("alice").token
    v1_spec = {**SPEC, "params": [*SPEC["params"], {"name": "extra", "default": "x"}]}
    _deploy(
        server, token, class_params={"size": "small", "scale": 1, "extra": "x"}, class_spec=v1_spec
    )
    default_v1 = server.ok("GET", "/v1/deployments/svc/functions/Model", token=token)
    large_v1 = _pool(server, token, size="large")
    v2_spec = {
        **SPEC,
        "params": [{"name": "size", "default": "medium"}, {"name": "scale", "default": 1}],
    }
    _deploy(server, token, class_params={"size": "medium", "scale": 1}, class_spec=v2_spec)
    [from_default] = server.new_calls(token, default_v1["id"])
    [from_large] = server.new_calls(token, large_v1["id"])
    with server.state.engine.connect() as conn:
        ran = dict(
            conn.execute(
                select(calls.c.id, functions.c.spec)
                .join(functions, functions.c.id == calls.c.function_id)
                .where(calls.c.id.in_([from_default, from_large]))
            ).all()
        )
    # Model() made on v1 keeps size=small (v1's default), not v2's medium.
    assert ran[from_default]["class_params"] == {"size": "small", "scale": 1}
    # Model(size="large") made on v1 carried extra="x" (v1's default, which v2 dropped).
    assert ran[from_large]["class_params"] == {"size": "large", "scale": 1}


def test_canonical_parameters_are_the_same_rule_everywhere() -> None:
    spec = ClassSpec.model_validate(SPEC)
    assert canonical_params(spec, "Model", {}) == {"size": "small", "scale": 1}
    assert canonical_params(spec, "Model", {"scale": 2}) == {"size": "small", "scale": 2}
    assert pool_name("Model", spec, {"scale": 1, "size": "small"}) == "Model"
    assert pool_name("Model", spec, {"size": "small", "scale": True}) != "Model"
