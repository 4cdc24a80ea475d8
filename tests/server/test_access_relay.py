"""The access relay's bookkeeping (server/relay.py): the per-account session limit, requests
handed to their host's agent once, attach only by that host, sessions ended with their
container."""

from __future__ import annotations

import asyncio

import pytest

from crucible.errors import NotFoundError, RateLimitedError
from crucible.protocol.access import AccessOpen, AccessRequest
from crucible.server.relay import AccessRelay


def _request(cid: str = "ct-a") -> AccessRequest:
    return AccessRequest(
        session_id=AccessRelay.new_id(),
        container_id=cid,
        open=AccessOpen(kind="exec", argv=["true"]),
    )


def test_sessions_per_account_are_limited() -> None:
    async def run() -> None:
        relay = AccessRelay()
        for _ in range(3):
            relay.open("acct-1", "h-1", _request(), max_per_account=3)
        with pytest.raises(RateLimitedError, match="CRUCIBLE_ACCESS_MAX_SESSIONS=3"):
            relay.open("acct-1", "h-1", _request(), max_per_account=3)
        relay.open("acct-2", "h-1", _request(), max_per_account=3)  # another account's own
        assert relay.count("acct-1") == 3 and relay.count() == 4

    asyncio.run(run())


def test_requests_go_to_their_host_once_and_only_it_attaches() -> None:
    async def run() -> None:
        relay = AccessRelay()
        s = relay.open("acct-1", "h-1", _request(), max_per_account=8)
        assert relay.take_requests("h-2") == []
        assert [r.session_id for r in relay.take_requests("h-1")] == [s.id]
        assert relay.take_requests("h-1") == []
        with pytest.raises(NotFoundError):
            relay.attach("h-2", s.id, object())
        ws = object()
        relay.attach("h-1", s.id, ws)
        assert s.agent.result() is ws
        with pytest.raises(NotFoundError):  # once
            relay.attach("h-1", s.id, object())

    asyncio.run(run())


def test_sessions_end_with_their_container() -> None:
    async def run() -> None:
        relay = AccessRelay()
        a = relay.open("acct-1", "h-1", _request("ct-a"), max_per_account=8)
        b = relay.open("acct-1", "h-1", _request("ct-b"), max_per_account=8)
        assert relay.end_container("ct-a") == 1
        assert a.done.is_set() and a.ended_by_container
        assert not b.done.is_set() and relay.count() == 1

    asyncio.run(run())
