"""How a response travels back through the gateway on its durable path (every request a
call; the fast path is tests/e2e/test_web_relay_e2e.py), with real processes: a small response
that is whole at once rides in its call's output (no items stored: one exchange), every
header the app set is kept, and a slow or large response still streams as the call's items
and arrives intact."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx

from crucible.protocol import json_payload

import app_web
from harness import Exchange


def test_responses_through_the_gateway(tmp_path: Path) -> None:
    # The durable path (every request a call): the fast path (server/web_relay.py) off.
    exchange = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", CRUCIBLE_WEB_RELAY="false")
    exchange.start_server()
    try:
        exchange.start_agent("host-a")
        token = exchange.owner_token("webfast")
        builder = exchange.client(token)
        try:
            _responses(exchange, builder)
        finally:
            builder.close()
    finally:
        exchange.close()


def _items(builder: Any, call_id: str) -> list[Any]:
    page = builder.get(f"/v1/calls/{call_id}/items?after=0")
    assert page["done"], page
    return list(page["items"])


def _output(builder: Any, call_id: str) -> Any:
    call = builder.get(f"/v1/calls/{call_id}")
    assert call["state"] == "succeeded", call
    return json_payload.decode(base64.b64decode(call["result"]["data"]))


def _responses(exchange: Exchange, builder: Any) -> None:
    app_web.app.deploy(client=builder)
    base = f"{exchange.url}/web/operator/web/api"
    with httpx.Client(timeout=120) as http:
        r = http.post(f"{base}/echo", json={"x": 1})
        assert r.status_code == 200 and r.json() == {"got": {"x": 1}}
        assert r.headers["content-length"] == str(len(r.content))
        call_id = r.headers["x-crucible-call-id"]
        # The whole response came back with the call's output: nothing was stored as items.
        assert _items(builder, call_id) == []
        parts = _output(builder, call_id)["web_response"]
        assert parts[0]["status"] == 200

        # Repeated headers (two cookies) are all passed on.
        r = http.get(f"{base}/cookies")
        assert r.status_code == 200 and r.text == "two cookies"
        assert sorted(r.cookies.keys()) == ["a", "b"]
        assert len(r.headers.get_list("set-cookie")) == 2

        # A response over the worker's hold limit streams as items, whole.
        r = http.get(f"{base}/big", params={"kib": 256})
        assert r.status_code == 200 and r.content == b"x" * 256 * 1024
        assert _items(builder, r.headers["x-crucible-call-id"]) != []

        # A slow response streams: its parts are sent as items while the app produces them.
        with http.stream("GET", f"{base}/slow", params={"n": 3}) as s:
            assert s.status_code == 200
            assert "".join(s.iter_text()) == "0\n1\n2\n"
            slow_id = s.headers["x-crucible-call-id"]
        assert len(_items(builder, slow_id)) >= 2

        # HEAD answers with the app's headers and no body.
        r = http.head(f"{base}/cookies")
        assert r.status_code in (200, 405) and r.content == b""
