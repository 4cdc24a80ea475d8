"""The web gateway tells nobody but the endpoint's owner which accounts, deployments and
functions exist: an unknown account, deployment or function, a function that is not a web
endpoint, a stopped deployment and a private endpoint all get one answer (same status, same
message) from a caller without the owner's token. (Serving requests is tested end to end in
tests/e2e/test_web_e2e.py.)"""

from __future__ import annotations

from typing import Any

from crucible.protocol.accounts import Scope

from server_testlib import ServerUnderTest, error_code


def _deploy(
    server: ServerUnderTest, token: str, name: str, functions: list[dict[str, Any]]
) -> None:
    started = server.ok("POST", "/v1/deployments", token=token, json={"name": name})
    bundle = server.put_blob(token)
    specs = [
        {"code": {"bundle": bundle, "module": "m", "qualname": f["name"]}, **f} for f in functions
    ]
    server.ok(
        "POST", f"/v1/apps/{started['app_id']}/functions", token=token, json={"functions": specs}
    )
    server.ok(
        "POST", f"/v1/deployments/{name}/activate", token=token, json={"app_id": started["app_id"]}
    )


def test_one_answer_for_everything_a_stranger_may_not_see(server: ServerUnderTest) -> None:
    owner = server.tenant("webby").token
    web = {"kind": "fastapi_endpoint", "method": "GET", "public": False}
    _deploy(server, owner, "site", [{"name": "private", "web": web}, {"name": "plain"}])
    _deploy(server, owner, "gone", [{"name": "private", "web": web}])
    server.ok("POST", "/v1/deployments/gone/stop", token=owner)
    stranger = server.tenant("stranger").token
    host = server.tenant("webby", Scope.HOST).token  # the owner's, but not a builder token

    probes = [
        "/web/nobody/site/private/",  # unknown account
        "/web/webby/nosuch/private/",  # unknown deployment
        "/web/webby/site/nosuch/",  # unknown function
        "/web/webby/site/plain/",  # not a web endpoint
        "/web/webby/gone/private/",  # stopped deployment
        "/web/webby/site/private/",  # exists, private
    ]
    for headers, status in (
        ({}, 401),
        ({"authorization": "Bearer cru_not-a-token"}, 401),
        ({"authorization": f"Bearer {stranger}"}, 404),
        ({"authorization": f"Bearer {host}"}, 404),
    ):
        answers = set()
        for path in probes:
            r = server.request("GET", path, headers=headers)
            assert r.status_code == status, (path, headers, r.status_code, r.text)
            error_code(r)
            message = r.json()["error"]["message"]
            # The same words for all, up to the path the caller sent.
            answers.add(message.replace(path.rstrip("/"), "<path>"))
            assert "stopped" not in message and "not a web endpoint" not in message
        assert len(answers) == 1, answers

    # The owner is told what is wrong.
    auth = {"authorization": f"Bearer {owner}"}
    for path, words in (
        ("/web/webby/nosuch/private/", "nosuch"),
        ("/web/webby/site/nosuch/", "no function"),
        ("/web/webby/site/plain/", "not a web endpoint"),
        ("/web/webby/gone/private/", "stopped"),
    ):
        r = server.request("GET", path, headers=auth)
        assert r.status_code == 404 and words in r.json()["error"]["message"], (path, r.text)


def test_the_scheduler_counts_relayed_requests_as_running(server: ServerUnderTest) -> None:
    """A request relayed in memory (server/web_relay.py) has no call row; the scheduler's
    view of the function's load counts it all the same, and its container as busy."""
    import asyncio

    from sqlalchemy import select

    from crucible.server.dispatch import Parked
    from crucible.server.scheduler.loop import SchedulerLoop
    from crucible.server.store.tables import functions

    owner = server.tenant("relayer").token
    web = {"kind": "fastapi_endpoint", "method": "GET", "public": True}
    _deploy(server, owner, "site", [{"name": "hello", "web": web}])
    with server.state.engine.connect() as conn:
        fid = conn.execute(select(functions.c.id).where(functions.c.name == "hello")).scalar()
    assert fid is not None
    loop = SchedulerLoop(server.state)

    def running() -> int:
        # As a tick reads it: the fleet view brought up to date, then the demands.
        state, fleet = server.state, loop.fleet
        barrier = fleet.barrier(state.engine)
        with state.engine.begin() as conn:
            now = state.clock.now_ms()
            fleet.refresh(conn, state.market, now, barrier)
            demands, _, _ = loop._demands(conn, now)
        return sum(d.running for d in demands if d.id == fid)

    assert running() == 0
    server.state.dispatcher.park(Parked("co-warm", fid, 1, asyncio.Event()))
    relayed = server.state.web.relay.hand(server.state.dispatcher, fid, "acct", b"{}", 60.0)
    assert relayed is not None
    assert running() == 1 and server.state.web.relay.busy() == {"co-warm"}


def test_a_public_endpoint_whose_owner_has_no_credit_says_so_without_the_owners_account(
    make_server: Any,
) -> None:
    """The owner's refusal names its account and balance: a stranger calling its public
    endpoint is told only that the owner cannot run it now (and is not charged)."""
    server: ServerUnderTest = make_server(require_credits=True)
    owner = server.tenant("broke")
    web = {"kind": "fastapi_endpoint", "method": "GET", "public": True}
    _deploy(server, owner.token, "site", [{"name": "hello", "web": web}])
    for headers in ({}, {"authorization": f"Bearer {server.tenant('visitor').token}"}):
        r = server.request("GET", "/web/broke/site/hello/", headers=headers)
        assert r.status_code == 402 and error_code(r) == "insufficient_credit", r.text
        message = r.json()["error"]["message"]
        assert "owner of this endpoint has no credit" in message
        assert owner.account_id not in message and "balance" not in message
