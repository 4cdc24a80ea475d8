"""Small faults of the web gateway, in process: a web endpoint's 413 speaks of a web request
(not of inputs and blobs); an app that returns without a response, or sends a body before
its start, is reported in its logs by the worker and answered 502 by the gateway, on the
fast path through a parked exchange too. (The same end to end, with a web channel:
tests/e2e/test_web_small_faults_e2e.py.)"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from crucible.protocol.web import encode_response
from crucible.server.dispatch import Dispatcher, Parked
from crucible.server.web_relay import Ended, WebRelay, relayed_response
from crucible.worker.web import http_parts

from server_testlib import ServerUnderTest

LIMIT = 64 * 1024


def test_a_web_request_over_the_body_limit_is_told_so_without_the_json_apis_advice(
    make_server: Any,
) -> None:
    server: ServerUnderTest = make_server(max_request_bytes=LIMIT)
    body = b"x" * (LIMIT + 1)

    async def chunked() -> AsyncIterator[bytes]:
        yield body[:LIMIT]
        yield body[LIMIT:]

    for content in (body, chunked()):  # with a Content-Length, and without one
        r = server.request("POST", "/web/anyone/site/fn/upload", content=content)
        assert r.status_code == 413, r.text
        message = r.json()["error"]["message"]
        assert "web endpoint" in message and f"{LIMIT:,}-byte" in message, message
        assert "inputs" not in message and "blobs" not in message, message
    # The JSON API's own requests keep their advice.
    r = server.request("POST", "/v1/functions/fn-1/calls", content=body)
    assert r.status_code == 413 and "blobs" in r.json()["error"]["message"], r.text


async def _nothing_sent(scope: dict[str, Any], receive: Any, send: Any) -> None:
    return


async def _body_first(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.body", "body": b"no start"})


_REQUEST = {"method": "GET", "path": "/", "raw_path": "/", "query": "", "headers": []}


@pytest.mark.parametrize(
    ("app", "logged", "parts"),
    [
        (_nothing_sent, "returned without sending a response", 0),
        (_body_first, "sent 'http.response.body' before 'http.response.start'", 1),
    ],
)
def test_the_worker_reports_an_app_without_a_valid_response_in_its_logs(
    app: Any, logged: str, parts: int, capsys: pytest.CaptureFixture[str]
) -> None:
    got = list(http_parts(app, dict(_REQUEST)))
    assert len(got) == parts and all("status" not in p for p in got)
    err = capsys.readouterr().err
    assert logged in err and "502 bad_gateway" in err, err


def _relayed_through_a_parked_exchange(parts: list[dict[str, Any]]) -> Any:
    """The answer to a request relayed to a parked container whose output holds ``parts``
    (what its worker's ``http_parts`` gave)."""

    async def go() -> Any:
        relay, dispatcher = WebRelay(), Dispatcher()
        dispatcher.park(Parked("co-1", "fn-1", 1, asyncio.Event()))
        relayed = relay.hand(dispatcher, "fn-1", "acct", b"raw", 5.0)
        assert relayed is not None
        output = encode_response([orjson.dumps(p) for p in parts]) if parts else b"0"
        relay.finish(relayed, Ended("succeeded", output))
        return await relayed_response(relayed)

    return asyncio.run(go())


def test_a_relayed_request_whose_app_sent_no_valid_response_is_a_bad_gateway() -> None:
    body = {"body": base64.b64encode(b"no start").decode(), "more": False}
    for parts, reason in (
        ([], "returned without sending a response"),
        ([body], "sent a response body before its start"),
    ):
        answer = _relayed_through_a_parked_exchange(parts)
        assert answer is not None and answer.status is None
        assert answer.error_code == "bad_gateway" and answer.state == "failed"
        assert answer.reason is not None and reason in answer.reason, answer.reason
