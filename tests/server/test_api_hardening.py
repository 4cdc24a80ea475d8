"""API hardening in-process on SQLite and PostgreSQL: per-token rate limits on the submit and
quote routes (429 rate_limited with Retry-After, per token, refilling over time), and the
audit log of privileged actions (admin only, filtered, paged, never holding a secret)."""

from __future__ import annotations

import gzip

import pytest

from crucible.errors import RateLimitedError
from crucible.protocol.accounts import Scope
from crucible.server.ratelimit import RateLimiter

from server_testlib import MakeServer, ServerUnderTest, error_code

SLOW = {"submit_rate_per_s": 0.001, "submit_burst": 2, "quote_rate_per_s": 0.001, "quote_burst": 1}


def _function(server: ServerUnderTest, token: str) -> str:
    app_id = server.new_app(token)
    return server.new_function(token, app_id, server.put_blob(token))


def _assert_limited(r: object, what: str) -> None:
    assert r.status_code == 429, r.text  # type: ignore[attr-defined]
    assert error_code(r) == "rate_limited"  # type: ignore[arg-type]
    assert int(r.headers["retry-after"]) >= 1  # type: ignore[attr-defined]
    message = r.json()["error"]["message"]  # type: ignore[attr-defined]
    assert what in message and "CRUCIBLE_" in message


def test_submits_past_the_burst_get_429_with_retry_after_per_token(
    make_server: MakeServer,
) -> None:
    server = make_server(**SLOW)
    alice = server.tenant("alice").token
    fn = _function(server, alice)
    body = {"inputs": [{"args": {"data": "gAQ="}}]}
    for _ in range(2):  # the burst
        assert server.request(
            "POST", f"/v1/functions/{fn}/calls", token=alice, json=body
        ).is_success
    r = server.request("POST", f"/v1/functions/{fn}/calls", token=alice, json=body)
    _assert_limited(r, "submit requests")
    # Another token of the same account has its own bucket; reads are not limited.
    other = server.tenant("alice").token
    assert server.request("POST", f"/v1/functions/{fn}/calls", token=other, json=body).is_success
    assert server.request("GET", "/v1/calls", token=alice).is_success
    # The refused submit was not accepted: 3 calls, not 4.
    assert len(server.ok("GET", "/v1/calls", token=alice)["calls"]) == 3


def test_quotes_and_job_runs_are_limited_too(make_server: MakeServer) -> None:
    server = make_server(**SLOW)
    bob = server.tenant("bob").token
    assert server.request("POST", "/v1/market/quote", token=bob, json={"gpu": "H100"}).is_success
    _assert_limited(
        server.request("POST", "/v1/market/quote", token=bob, json={"gpu": "H100"}), "quotes"
    )
    for _ in range(2):  # an unknown deployment still counts: the limit comes first
        r = server.request("POST", "/v1/jobs/nope/f/run", token=bob, json={"input": 1})
        assert r.status_code == 404
    _assert_limited(
        server.request("POST", "/v1/jobs/nope/f/run", token=bob, json={"input": 1}),
        "submit requests",
    )


def test_web_gateway_requests_are_limited_per_token_or_per_client(
    make_server: MakeServer,
) -> None:
    server = make_server(**SLOW)
    token = server.tenant("webber").token
    for _ in range(2):
        assert server.request("GET", "/web/webber/svc/f/", token=token).status_code == 404
    _assert_limited(server.request("GET", "/web/webber/svc/f/", token=token), "submit requests")
    # Anonymous callers (public endpoints) share a bucket per client address.
    for _ in range(2):  # no such endpoint: without a token, the gateway's one answer is 401
        assert server.request("GET", "/web/webber/svc/f/").status_code == 401
    _assert_limited(server.request("GET", "/web/webber/svc/f/"), "submit requests")


def test_default_limits_are_generous(server: ServerUnderTest) -> None:
    token = server.tenant("busy").token
    for _ in range(50):
        r = server.request("POST", "/v1/market/quote", token=token, json={"gpu": "H100"})
        assert r.status_code == 200


def test_a_bucket_refills_at_the_rate() -> None:
    limiter = RateLimiter("submits", rate_per_s=2.0, burst=2, setting="CRUCIBLE_X")
    limiter.take("t", 0)
    limiter.take("t", 0)
    with pytest.raises(RateLimitedError) as refused:
        limiter.take("t", 0)
    assert refused.value.retry_after_s == pytest.approx(0.5)
    limiter.take("u", 0)  # another token
    limiter.take("t", 500)  # half a second later: one more
    with pytest.raises(RateLimitedError):
        limiter.take("t", 500)
    limiter.take("t", 10_000)  # refilled, but only up to the burst
    limiter.take("t", 10_000)
    with pytest.raises(RateLimitedError):
        limiter.take("t", 10_000)
    RateLimiter("off", rate_per_s=0, burst=1, setting="X").take("t", 0)  # 0: no limit


def test_privileged_actions_are_audited_and_only_admins_read_them(
    server: ServerUnderTest,
) -> None:
    admin = server.tenant("operator", Scope.ADMIN)
    made = server.ok("POST", "/v1/accounts", token=admin.token, json={"name": "carol"})
    carol_token = server.ok(
        "POST", "/v1/tokens", token=admin.token, json={"scope": "user", "account_id": made["id"]}
    )
    server.ok(
        "POST",
        "/v1/credits/grants",
        token=admin.token,
        json={"account": "carol", "amount_micros": 5_000_000, "memo": "welcome"},
    )
    server.ok(
        "PUT",
        "/v1/credits/cap",
        token=carol_token["token"],
        json={"account": "carol", "cap_micros": 1_000},
    )
    host_id = server.register_host(server.tenant("carol", Scope.HOST).token, "c-1")
    server.ok(
        "PUT",
        f"/v1/hosts/{host_id}/offers",
        token=carol_token["token"],
        json={
            "device_type": "cpu",
            "on_demand_micros": 50_000,
            "interruptible_min_micros": 10_000,
            "reserved_micros": 40_000,
        },
    )
    server.ok(
        "PATCH", f"/v1/hosts/{host_id}/profile", token=carol_token["token"], json={"draining": True}
    )
    own = f"/v1/tokens/{carol_token['id']}?force=true"  # the token in use: force
    server.request("DELETE", own, token=carol_token["token"])
    # Revoked again (by its account's other token): nothing changes, nothing more is audited.
    again = server.request(
        "DELETE", f"/v1/tokens/{carol_token['id']}", token=server.tenant("carol").token
    )
    assert again.status_code == 204

    page = server.ok("GET", "/v1/audit", token=admin.token)
    actions = [e["action"] for e in page["entries"]]
    assert actions == [
        "token.revoke",
        "host.profile",
        "host.offer",
        "host.verification",  # at registration: no self-test results, not verified
        "credits.cap",
        "credits.grant",
        "token.create",
        "account.create",
    ]
    revoke, profile, offer, verification, cap, grant, create, account = page["entries"]
    assert verification["target"] == host_id and verification["detail"]["verified"] is False
    assert revoke["target"] == carol_token["id"] and revoke["actor_account_id"] == made["id"]
    assert profile["detail"] == {"draining": True} and profile["target"] == host_id
    assert offer["detail"]["on_demand_micros"] == 50_000
    assert cap["detail"]["cap_micros"] == 1_000
    assert grant["detail"]["amount_micros"] == 5_000_000 and grant["account_id"] == made["id"]
    assert grant["actor_token_id"] == admin.token_id
    assert create["detail"]["scope"] == "user" and create["target"] == carol_token["id"]
    assert account["detail"] == {"name": "carol"}
    assert carol_token["token"] not in str(page)  # never a secret

    # Filters and pages.
    only = server.ok("GET", "/v1/audit?action=credits.grant", token=admin.token)["entries"]
    assert [e["action"] for e in only] == ["credits.grant"]
    first = server.ok("GET", "/v1/audit?limit=3", token=admin.token)
    assert len(first["entries"]) == 3 and first["next_before"] == first["entries"][-1]["id"]
    rest = server.ok("GET", f"/v1/audit?limit=10&before={first['next_before']}", token=admin.token)
    assert [e["action"] for e in first["entries"] + rest["entries"]] == actions
    assert rest["next_before"] is None
    r = server.request("GET", "/v1/audit?action=nope", token=admin.token)
    assert r.status_code == 400 and "credits.grant" in r.json()["error"]["message"]
    # An account by its name, as every command that names one takes it (it gave an empty
    # log, which reads as "nothing happened"); an unknown one is named as such.
    by_id = server.ok("GET", f"/v1/audit?account={made['id']}", token=admin.token)["entries"]
    by_name = server.ok("GET", "/v1/audit?account=carol", token=admin.token)["entries"]
    assert by_name == by_id and by_id
    r = server.request("GET", "/v1/audit?account=nobody", token=admin.token)
    assert r.status_code == 404 and "no account 'nobody'" in r.text

    # Not for builders, hosts or anonymous callers.
    r = server.request("GET", "/v1/audit", token=server.tenant("carol").token)
    assert r.status_code == 403 and error_code(r) == "forbidden"
    assert server.request("GET", "/v1/audit").status_code == 401


def test_a_body_that_is_not_readable_json_says_why(server: ServerUnderTest) -> None:
    """The framework's "There was an error parsing the body" named nothing."""
    token = server.tenant("reader").token
    deep = b'{"name":"n1","create_if_missing":' + b"[" * 10000 + b"]" * 10000 + b"}"
    cases = [
        (deep, {}, "nested too deep"),
        ('{"name":"\xe9"}'.encode("latin-1"), {}, "not UTF-8"),
        (gzip.compress(b'{"name":"x"}'), {"content-encoding": "gzip"}, "send it uncompressed"),
    ]
    for body, headers, words in cases:
        h = {"content-type": "application/json", **headers}
        r = server.request("POST", "/v1/dicts", token=token, content=body, headers=h)
        assert r.status_code == 400 and error_code(r) == "invalid_request", r.text
        assert words in r.json()["error"]["message"], r.text
