"""Authentication and token scopes, through the real ASGI app on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from crucible.protocol.accounts import Scope
from crucible.server.auth import container_token

from server_testlib import V1_ROUTES, MakeServer, ServerUnderTest, error_code, send, sha256


def test_healthz_needs_no_token(server: ServerUnderTest) -> None:
    for headers in ({}, {"authorization": "Bearer cru_not-a-token"}, {"authorization": "junk"}):
        r = server.request("GET", "/healthz", headers=headers)
        assert r.status_code == 200
        assert r.json() == {"status": "ok"}


def test_openapi_lists_exactly_these_routes(server: ServerUnderTest) -> None:
    # The API description is behind authentication like everything but /healthz.
    for headers in ({}, {"authorization": "Bearer cru_not-a-token"}):
        r = server.request("GET", "/openapi.json", headers=headers)
        assert r.status_code == 401 and error_code(r) == "unauthorized"
    r = server.request("GET", "/openapi.json", token=server.tenant("alice").token)
    assert r.status_code == 200
    listed = sorted(
        (method.upper(), path)
        for path, ops in r.json()["paths"].items()
        if path.startswith("/v1/")
        for method in ops
    )
    assert listed == V1_ROUTES


def test_every_v1_route_answers_401_without_a_valid_token(server: ServerUnderTest) -> None:
    user = server.tenant("alice")
    bad_headers = [
        {},
        {"authorization": ""},
        {"authorization": "Bearer"},
        {"authorization": "Bearer "},
        {"authorization": "Bearer cru_this-token-was-never-issued"},
        {"authorization": f"Basic {user.token}"},
        {"authorization": user.token},  # the secret without its scheme
        {"authorization": "Bearer ctr_ct-1.0123456789abcdef0123456789abcdef01234567"},  # forged
        {"authorization": "Bearer ctr_"},
        # Correctly signed, but for a container that does not exist.
        {"authorization": f"Bearer {container_token(server.state.secret, 'ct-nowhere')}"},
    ]
    for method, path in V1_ROUTES:
        for headers in bad_headers:
            r = send(server, method, path, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
            assert r.headers.get("www-authenticate") == "Bearer"
            if method != "HEAD":
                assert error_code(r) == "unauthorized", (method, path, r.text)


def test_the_bearer_scheme_is_case_insensitive(server: ServerUnderTest) -> None:
    """RFC 9110: a scheme is case-insensitive (some clients send ``bearer``)."""
    user = server.tenant("alice")
    for scheme in ("bearer", "BEARER", "bEaReR"):
        r = server.request(
            "GET", "/v1/accounts/me", headers={"authorization": f"{scheme} {user.token}"}
        )
        assert r.status_code == 200, (scheme, r.text)
    r = server.request("GET", "/v1/accounts/me", headers={"authorization": f"Token {user.token}"})
    assert r.status_code == 401 and "scheme is not Bearer" in r.json()["error"]["message"]


def test_a_revoked_token_stops_working(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    made = server.ok("POST", "/v1/tokens", token=alice.token, json={"name": "ci"})
    assert made["scope"] == "user" and made["token"].startswith("cru_")
    second = made["token"]
    assert server.ok("GET", "/v1/accounts/me", token=second)["id"] == alice.account_id

    r = server.request("DELETE", f"/v1/tokens/{made['id']}", token=alice.token)
    assert r.status_code == 204
    for method, path in [("GET", "/v1/accounts/me"), ("GET", "/v1/apps"), ("POST", "/v1/apps")]:
        r = send(server, method, path, token=second)
        assert r.status_code == 401 and error_code(r) == "unauthorized"
    listed = {t["id"]: t for t in server.ok("GET", "/v1/tokens", token=alice.token)}
    assert listed[made["id"]]["revoked"] is True
    assert "token" not in listed[made["id"]]  # secrets are shown once, at creation
    # The other token of the account is untouched.
    assert server.ok("GET", "/v1/accounts/me", token=alice.token)["id"] == alice.account_id


def test_revocation_by_another_replica_is_seen(make_server: MakeServer) -> None:
    one, two = make_server(), make_server()
    alice = one.tenant("alice")
    made = one.ok("POST", "/v1/tokens", token=alice.token, json={})
    assert two.request("DELETE", f"/v1/tokens/{made['id']}", token=alice.token).status_code == 204
    r = one.request("GET", "/v1/accounts/me", token=made["token"])  # never cached by `one`
    assert r.status_code == 401


def test_a_token_revoked_elsewhere_cannot_mint_another(make_server: MakeServer) -> None:
    """A replica's token cache keeps a revoked token working there for a few seconds; in
    that window it minted a new token, which outlived the revocation."""
    one, two = make_server(), make_server()
    alice = one.tenant("alice")
    made = one.ok("POST", "/v1/tokens", token=alice.token, json={"name": "leaked"})
    assert one.ok("GET", "/v1/accounts/me", token=made["token"])["id"]  # cached by `one`
    assert two.request("DELETE", f"/v1/tokens/{made['id']}", token=alice.token).status_code == 204
    r = one.request("POST", "/v1/tokens", token=made["token"], json={"name": "child"})
    assert r.status_code == 401 and "revoked" in r.text, r.text
    names = [t["name"] for t in one.ok("GET", "/v1/tokens", token=alice.token)]
    assert "child" not in names


def test_host_tokens_cannot_manage_apps_or_tokens(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    host = server.tenant("alice", Scope.HOST)
    app_id = server.new_app(alice.token)
    bundle = server.put_blob(alice.token)

    r = server.request("POST", "/v1/apps", token=host.token, json={"name": "x"})
    assert r.status_code == 403 and error_code(r) == "forbidden"
    spec = {"name": "f", "code": {"bundle": bundle, "module": "m", "qualname": "f"}}
    r = server.request(
        "POST", f"/v1/apps/{app_id}/functions", token=host.token, json={"functions": [spec]}
    )
    assert r.status_code == 403 and error_code(r) == "forbidden"
    for scope in ("user", "host", "admin"):
        r = server.request("POST", "/v1/tokens", token=host.token, json={"scope": scope})
        assert r.status_code == 403 and error_code(r) == "forbidden"
    r = server.request("POST", "/v1/accounts", token=host.token, json={"name": "mallory"})
    assert r.status_code == 403
    # What a host token is for works.
    assert server.register_host(host.token).startswith("ho-")


def test_user_tokens_cannot_act_as_hosts_or_admins(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    bob = server.tenant("bob")
    host = server.tenant("alice", Scope.HOST)
    host_id = server.register_host(host.token)

    checks = [
        (
            "POST",
            "/v1/hosts/register",
            {"name": "h", "inventory": {"cpu_cores": 1, "memory_mib": 1024, "disk_mib": 0}},
        ),
        ("POST", f"/v1/hosts/{host_id}/sync", {}),
        ("POST", "/v1/accounts", {"name": "mallory"}),
        ("POST", "/v1/tokens", {"scope": "admin"}),
        ("POST", "/v1/tokens", {"account_id": bob.account_id}),
        ("POST", "/v1/containers/ct-1/exchange", {}),
    ]
    for method, path, body in checks:
        r = server.request(method, path, token=alice.token, json=body)
        assert r.status_code == 403, (path, body, r.text)
        assert error_code(r) == "forbidden"
    # A user may mint a host token for its own hosts.
    made = server.ok("POST", "/v1/tokens", token=alice.token, json={"scope": "host"})
    assert server.register_host(made["token"], name="host-b").startswith("ho-")


def test_admin_creates_accounts_and_their_tokens(server: ServerUnderTest) -> None:
    admin = server.tenant("operator", Scope.ADMIN)
    made = server.request("POST", "/v1/accounts", token=admin.token, json={"name": "carol"})
    assert made.status_code == 201
    carol = made.json()
    again = server.request("POST", "/v1/accounts", token=admin.token, json={"name": "carol"})
    assert again.status_code == 409 and error_code(again) == "conflict"
    tok = server.ok("POST", "/v1/tokens", token=admin.token, json={"account_id": carol["id"]})
    assert tok["account_id"] == carol["id"] and tok["scope"] == "user"
    assert server.ok("GET", "/v1/accounts/me", token=tok["token"]) == carol
    r = server.request("POST", "/v1/tokens", token=admin.token, json={"account_id": "ac-nobody"})
    assert r.status_code == 404 and error_code(r) == "not_found"
    # By its name too: `crucible account create carol` then `token create --account carol`.
    tok = server.ok("POST", "/v1/tokens", token=admin.token, json={"account_id": "carol"})
    assert tok["account_id"] == carol["id"]
    # A name that looks like an id could be another account's id (grants and caps take
    # either): refused.
    r = server.request("POST", "/v1/accounts", token=admin.token, json={"name": carol["id"]})
    assert r.status_code == 400 and "starts account ids" in r.text, r.text
    # A name is a path segment of the account's web URLs: "." and ".." were accepted, and a
    # client folded /web/../svc/f/ into /svc/f/.
    for name in (".", "..", "-x", "_"):
        r = server.request("POST", "/v1/accounts", token=admin.token, json={"name": name})
        assert r.status_code == 400 and error_code(r) == "invalid_request", (name, r.text)


def test_an_account_is_named_by_id_or_name_and_others_are_not_told_apart(
    server: ServerUnderTest,
) -> None:
    alice = server.tenant("alice")
    bob = server.tenant("bob")
    # Bob names his own account by name or id, for reading and for his cap.
    for me in ("bob", bob.account_id):
        assert server.ok("GET", f"/v1/credits?account={me}", token=bob.token)
        body = {"account": me, "cap_micros": 5}
        assert server.ok("PUT", "/v1/credits/cap", token=bob.token, json=body)
    # Alice's account (by name or id) reads as one that does not exist, in the same words.
    answers = set()
    for other in ("alice", alice.account_id, "zed", "ac-nobody"):
        for r in (
            server.request("GET", f"/v1/credits?account={other}", token=bob.token),
            server.request(
                "PUT", "/v1/credits/cap", token=bob.token, json={"account": other, "cap_micros": 0}
            ),
        ):
            assert r.status_code == 404, r.text
            answers.add(r.json()["error"]["message"].replace(repr(other), "X"))
    assert len(answers) == 1, answers
    assert "crucible account list" not in answers.pop()  # no such command


def test_container_tokens_only_exchange_and_read_blobs(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    host = server.tenant("alice", Scope.HOST)
    bundle = server.put_blob(alice.token)
    app_id = server.new_app(alice.token)
    fid = server.new_function(alice.token, app_id, bundle)
    host_id = server.register_host(host.token)
    cid, ctok = server.place_container(fid, host_id)
    other_cid, _ = server.place_container(fid, host_id)
    [call_id] = server.new_calls(alice.token, fid)

    # What a worker needs works: its account's blobs, uploads, and its own exchange.
    r = server.request("GET", f"/v1/blobs/{bundle}", token=ctok)
    assert r.status_code == 200 and r.content == server.state.blobs.get(bundle)
    assert server.request("HEAD", f"/v1/blobs/{bundle}", token=ctok).status_code == 200
    result = b"a result too large to inline"
    r = server.request("PUT", f"/v1/blobs/{sha256(result)}", token=ctok, content=result)
    assert r.status_code == 201
    reply = server.ok("POST", f"/v1/containers/{cid}/exchange", token=ctok, json={"want": 4})
    assert [i["call_id"] for i in reply["inputs"]] == [call_id]
    assert reply["inputs"][0]["attempt"] == 1

    # Nothing else.
    forbidden = [
        ("GET", "/v1/apps"),
        ("POST", "/v1/apps"),
        ("GET", f"/v1/apps/{app_id}"),
        ("GET", "/v1/calls"),
        ("GET", f"/v1/calls/{call_id}/timeline"),
        ("GET", "/v1/accounts/me"),
        ("POST", "/v1/tokens"),
        ("GET", "/v1/tokens"),
        ("POST", "/v1/hosts/register"),
        ("POST", f"/v1/hosts/{host_id}/sync"),
        ("GET", "/v1/hosts"),
        ("GET", "/v1/bill"),
    ]
    for method, path in forbidden:
        r = send(server, method, path, token=ctok)
        assert r.status_code == 403, (method, path, r.status_code, r.text)
        assert error_code(r) == "forbidden"
    # Another container's exchange does not exist for this token.
    r = server.request("POST", f"/v1/containers/{other_cid}/exchange", token=ctok, json={})
    assert r.status_code == 404 and error_code(r) == "not_found"
    # API tokens cannot pose as containers.
    for token in (alice.token, host.token):
        r = server.request("POST", f"/v1/containers/{cid}/exchange", token=token, json={})
        assert r.status_code == 403 and error_code(r) == "forbidden"
    # A tampered signature is refused outright.
    tampered = ctok[:-1] + ("0" if ctok[-1] != "0" else "1")
    r = server.request("POST", f"/v1/containers/{cid}/exchange", token=tampered, json={})
    assert r.status_code == 401 and error_code(r) == "unauthorized"
    # A token signed with another server secret is refused too.
    foreign = container_token("another-secret", cid)
    r = server.request("GET", f"/v1/blobs/{bundle}", token=foreign)
    assert r.status_code == 401


@pytest.mark.parametrize("scope", [Scope.USER, Scope.HOST, Scope.ADMIN])
def test_accounts_me_names_the_tokens_account(server: ServerUnderTest, scope: Scope) -> None:
    t = server.tenant("alice", scope)
    me = server.ok("GET", "/v1/accounts/me", token=t.token)
    assert me["id"] == t.account_id and me["name"] == "alice"


# What each kind of token may use; every other /v1 route answers it 403 forbidden.
ALLOWED = {
    "admin": {
        r
        for r in V1_ROUTES
        if r
        not in {
            ("POST", "/v1/containers/{container_id}/exchange"),
            ("POST", "/v1/containers/{container_id}/logs"),
            ("POST", "/v1/containers/{container_id}/items"),
            ("GET", "/v1/containers/{container_id}/calls/{call_id}/inbox"),
            ("GET", "/v1/containers/{container_id}/secrets"),
            ("GET", "/v1/containers/{container_id}/registry-auth"),
        }
    },
    "user": {
        r
        for r in V1_ROUTES
        if r
        not in {
            ("POST", "/v1/accounts"),  # operators create accounts
            ("PATCH", "/v1/accounts/{account}"),  # and approve providers
            ("GET", "/v1/audit"),  # and read the audit log
            ("POST", "/v1/hosts/register"),
            ("POST", "/v1/hosts/{host_id}/sync"),
            ("POST", "/v1/hosts/{host_id}/pod-disks"),
            ("POST", "/v1/containers/{container_id}/exchange"),
            ("POST", "/v1/containers/{container_id}/logs"),
            ("POST", "/v1/containers/{container_id}/items"),
            ("GET", "/v1/containers/{container_id}/calls/{call_id}/inbox"),
            ("GET", "/v1/containers/{container_id}/secrets"),
            ("GET", "/v1/containers/{container_id}/registry-auth"),
            ("POST", "/v1/secrets/rotate"),  # operators rotate the secrets key
        }
    },
    "host": {
        ("GET", "/v1/accounts/me"),
        ("POST", "/v1/hosts/register"),
        ("POST", "/v1/hosts/{host_id}/sync"),
        ("POST", "/v1/hosts/{host_id}/pod-disks"),
        ("GET", "/v1/hosts"),
    },
    "container": {
        ("PUT", "/v1/blobs/{sha}"),
        ("GET", "/v1/blobs/{sha}"),
        ("HEAD", "/v1/blobs/{sha}"),
        ("POST", "/v1/containers/{container_id}/exchange"),
        ("POST", "/v1/containers/{container_id}/logs"),
        ("POST", "/v1/containers/{container_id}/items"),
        ("GET", "/v1/containers/{container_id}/calls/{call_id}/inbox"),
        ("GET", "/v1/containers/{container_id}/secrets"),
        ("GET", "/v1/containers/{container_id}/registry-auth"),
        *((m, p) for m, p in V1_ROUTES if p.startswith(("/v1/dicts", "/v1/queues", "/v1/volumes"))),
        # A function calling another of its own app, and reading the calls it made
        # (test_nested_calls_auth.py: nothing of another app, nor others' calls).
        ("GET", "/v1/apps/{app_id}/functions/{name}"),
        ("POST", "/v1/apps/{app_id}/functions/{name}/pools"),
        ("POST", "/v1/functions/{function_id}/calls"),
        ("GET", "/v1/calls/{call_id}"),
        ("GET", "/v1/calls/{call_id}/items"),
        ("POST", "/v1/calls/{call_id}/cancel"),
        ("POST", "/v1/groups/{group_id}/results"),
    },
}


def test_scope_matrix(server: ServerUnderTest) -> None:
    tokens = {
        "admin": server.tenant("operator", Scope.ADMIN).token,
        "user": server.tenant("alice").token,
        "host": server.tenant("alice", Scope.HOST).token,
    }
    fn = server.new_function(
        tokens["user"], server.new_app(tokens["user"]), server.put_blob(tokens["user"])
    )
    _, tokens["container"] = server.place_container(fn, server.register_host(tokens["host"]))
    bodies = {
        ("POST", "/v1/accounts"): {"name": "someone"},
        ("POST", "/v1/tokens"): {},
        ("PATCH", "/v1/accounts/{account}"): {"provider": True},
        ("POST", "/v1/deployments/{name}/functions/{function}/pools"): {"params": {}},
        ("POST", "/v1/apps/{app_id}/functions/{name}/pools"): {"params": {}},
    }
    for scope, token in tokens.items():
        for route in V1_ROUTES:
            method, path = route
            kw: dict[str, object] = {}
            if route in bodies:
                kw["json"] = bodies[route]
            r = send(server, method, path, token=token, **kw)
            if route in ALLOWED[scope]:
                assert r.status_code not in (401, 403), (scope, route, r.status_code, r.text)
                assert r.status_code < 500, (scope, route, r.status_code, r.text)
            else:
                assert r.status_code == 403, (scope, route, r.status_code, r.text)
                if method != "HEAD":
                    assert error_code(r) == "forbidden"


def test_a_stopped_containers_token_reads_nothing(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    host = server.tenant("alice", Scope.HOST)
    bundle = server.put_blob(alice.token)
    fn = server.new_function(alice.token, server.new_app(alice.token), bundle)
    host_id = server.register_host(host.token)
    cid, ctok = server.place_container(fn, host_id)
    assert server.request("GET", f"/v1/blobs/{bundle}", token=ctok).status_code == 200
    report = {"container_id": cid, "state": "exited", "exit_code": 0, "reason": "exited"}
    server.ok("POST", f"/v1/hosts/{host_id}/sync", token=host.token, json={"containers": [report]})
    r = server.request("GET", f"/v1/blobs/{bundle}", token=ctok)
    assert r.status_code == 401 and error_code(r) == "unauthorized"
    r = server.request("PUT", f"/v1/blobs/{sha256(b'late')}", token=ctok, content=b"late")
    assert r.status_code == 401
    # Its worker, if still alive, is told to stop.
    reply = server.ok("POST", f"/v1/containers/{cid}/exchange", token=ctok, json={"want": 1})
    assert reply["stop"] is True and reply.get("inputs", []) == []
