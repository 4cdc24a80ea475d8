"""The gateway's fast path in memory (server/web_relay.py): a request goes only to a parked
container, only that container may answer it, its parts arrive in order, and a request
never taken is given back for the durable path."""

from __future__ import annotations

import asyncio
import base64

import orjson
import pytest

from crucible.protocol import json_payload
from crucible.protocol.web import encode_response
from crucible.server import web_relay
from crucible.server.dispatch import Dispatcher, Parked
from crucible.server.web_relay import Ended, WebRelay, relayed_response, rest_of


def _park(dispatcher: Dispatcher, container: str = "co-1", fn: str = "fn-1") -> Parked:
    parked = Parked(container, fn, 1, asyncio.Event())
    dispatcher.park(parked)
    return parked


def _part(obj: dict[str, object]) -> bytes:
    return json_payload.encode(obj)


def _body(text: bytes, more: bool) -> dict[str, object]:
    return {"body": base64.b64encode(text).decode(), "more": more}


def test_no_parked_container_means_no_relay() -> None:
    async def go() -> None:
        relay, dispatcher = WebRelay(), Dispatcher()
        assert relay.hand(dispatcher, "fn-1", "acct", b"{}", 5.0) is None
        _park(dispatcher, fn="fn-other")
        assert relay.hand(dispatcher, "fn-1", "acct", b"{}", 5.0) is None
        assert relay.in_flight() == {}

    asyncio.run(go())


def test_a_whole_response_from_the_output() -> None:
    async def go() -> None:
        relay, dispatcher = WebRelay(), Dispatcher()
        parked = _park(dispatcher)
        relayed = relay.hand(dispatcher, "fn-1", "acct", b"raw", 5.0)
        assert relayed is not None and parked.event.is_set()
        [given] = parked.handed
        assert given.call_id == relayed.id and given.call_id.startswith("rq-")
        assert given.args.raw() == b"raw"
        assert relay.in_flight() == {"fn-1": 1} and relay.busy() == {"co-1"}
        # Only the container it was handed to may answer it.
        assert relay.get(relayed.id, "co-2") is None
        start = orjson.dumps({"status": 201, "headers": [["x-a", "1"], ["x-a", "2"]]})
        body = orjson.dumps(_body(b"hello", False))
        relay.finish(relayed, Ended("succeeded", encode_response([start, body])))
        answer = await relayed_response(relayed)
        assert answer is not None and answer.status == 201
        assert answer.headers == [("x-a", "1"), ("x-a", "2")]
        assert answer.whole == b"hello" and answer.state == "succeeded"
        assert relay.in_flight() == {} and relay.busy() == set()

    asyncio.run(go())


def test_a_streamed_response_in_order_then_its_end() -> None:
    async def go() -> None:
        relay, dispatcher = WebRelay(), Dispatcher()
        _park(dispatcher)
        relayed = relay.hand(dispatcher, "fn-1", "acct", b"raw", 5.0)
        assert relayed is not None
        relay.items(relayed, 0, [_part({"status": 200, "headers": []}), _part(_body(b"a", True))])
        relay.items(relayed, 1, [_part(_body(b"a", True))])  # a resend: skipped
        answer = await relayed_response(relayed)
        assert answer is not None and answer.status == 200 and answer.whole is None
        relay.items(relayed, 2, [_part(_body(b"b", False))])
        relay.finish(relayed, Ended("succeeded", b"3"))
        assert [c async for c in answer.body] == [b"a", b"b"]
        assert answer.state == "succeeded"

    asyncio.run(go())


def test_a_request_never_taken_goes_back_and_a_silent_one_is_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def go() -> None:
        relay, dispatcher = WebRelay(), Dispatcher()
        _park(dispatcher)
        relayed = relay.hand(dispatcher, "fn-1", "acct", b"raw", 5.0)
        assert relayed is not None
        assert relay.undelivered("co-1", [relayed.id, "ca-other"]) == ["ca-other"]
        assert await relayed_response(relayed) is None  # the caller submits a call

        monkeypatch.setattr(web_relay, "GRACE_S", 0.0)
        _park(dispatcher)
        silent = relay.hand(dispatcher, "fn-1", "acct", b"raw", 0.05)
        assert silent is not None
        answer = await relayed_response(silent)
        assert answer is not None and answer.status is None and answer.state == "lost"

    asyncio.run(go())


def test_a_worker_far_ahead_of_its_reader_waits_and_an_abandoned_one_does_not() -> None:
    async def go() -> None:
        relay, dispatcher = WebRelay(), Dispatcher()
        _park(dispatcher)
        relayed = relay.hand(dispatcher, "fn-1", "acct", b"raw", 5.0)
        assert relayed is not None
        first = [_part({"status": 200, "headers": []})]
        many = [_part(_body(b"x", True)) for _ in range(web_relay.WINDOW + 10)]
        relay.items(relayed, 0, first + many)
        assert await relay.caught_up(relayed, 0.05) == -1
        answer = await relayed_response(relayed)
        assert answer is not None
        got = 0
        async for _ in answer.body:
            got += 1
            if got == 20:
                break
        assert await relay.caught_up(relayed, 0.05) == 21
        # The reader stops (its client left); another reads on from there (the OpenAI
        # router charging the rest of an answer).
        relay.abandon(relayed)
        assert await relay.caught_up(relayed, 0.05) == relayed.received
        rest = rest_of(relay, relayed)
        relay.items(relayed, relayed.received, [_part(_body(b"y", False))])
        relay.finish(relayed, Ended("succeeded", b"0"))
        tail = [c async for c in rest]
        assert tail[-1] == b"y" and len(tail) == web_relay.WINDOW + 10 - 20 + 1

    asyncio.run(go())


def test_a_container_that_exits_ends_its_relayed_requests() -> None:
    async def go() -> None:
        relay, dispatcher = WebRelay(), Dispatcher()
        _park(dispatcher)
        relayed = relay.hand(dispatcher, "fn-1", "acct", b"raw", 300.0)
        assert relayed is not None
        relay.end_container("co-other")
        assert relay.in_flight() == {"fn-1": 1}
        relay.end_container("co-1")
        answer = await relayed_response(relayed)
        assert answer is not None and answer.status is None and answer.state == "lost"
        assert answer.error_code == "container_exited" and relay.in_flight() == {}

    asyncio.run(go())
