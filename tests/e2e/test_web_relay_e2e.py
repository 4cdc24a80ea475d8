"""The gateway's fast path with real processes (server/web_relay.py): once a container of the
endpoint waits for work, an HTTP request is handed to it in memory and writes no call row;
the response (whole, streamed, large, an error) arrives as on the durable path; a request
that finds no waiting container (scale from zero, the only container busy) is a call."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from crucible.errors import NotFoundError

import app_web
from harness import Exchange, wait_for


def test_requests_are_relayed_to_a_warm_container(exchange: Exchange) -> None:
    token = exchange.owner_token("webrelay")
    builder = exchange.client(token)
    try:
        _relayed(exchange, builder, token)
    finally:
        builder.close()


def _relayed(exchange: Exchange, builder: Any, token: str) -> None:
    deployed = app_web.app.deploy(client=builder)
    base = f"{exchange.url}/web/operator/web"
    auth = {"authorization": f"Bearer {token}"}
    with httpx.Client(timeout=120) as http:
        # Scale from zero: no container waits yet, so the first request is a durable call.
        r = http.get(f"{base}/hello/", params={"name": "ada"}, headers=auth)
        assert r.status_code == 200 and r.json() == {"hello": "ada"}
        assert r.headers["x-crucible-call-id"].startswith("ca-")

        # Warm: relayed, with no call row behind its id.
        r = http.get(f"{base}/hello/", params={"name": "bob"}, headers=auth)
        assert r.status_code == 200 and r.json() == {"hello": "bob"}
        rid = r.headers["x-crucible-call-id"]
        assert rid.startswith("rq-")
        assert r.headers["content-length"] == str(len(r.content))
        with pytest.raises(NotFoundError):
            builder.get(f"/v1/calls/{rid}")

        # The same one answer for those who may not use it, relayed or not.
        assert http.get(f"{base}/hello/").status_code == 401
        stranger = exchange.new_account("stranger")
        r = http.get(f"{base}/hello/", headers={"authorization": f"Bearer {stranger}"})
        assert r.status_code == 404

        api = f"{base}/api"
        http.post(f"{api}/echo", json={"warm": True})  # the asgi_app's container starts
        r = http.post(f"{api}/echo", json={"x": 1})
        assert r.status_code == 200 and r.json() == {"got": {"x": 1}}
        assert r.headers["x-crucible-call-id"].startswith("rq-")

        # Repeated headers, a large response (sent as items) and a slow stream.
        r = http.get(f"{api}/cookies")
        assert r.status_code == 200 and len(r.headers.get_list("set-cookie")) == 2
        assert r.headers["x-crucible-call-id"].startswith("rq-")
        r = http.get(f"{api}/big", params={"kib": 3000})  # an item over 2 MiB: a blob
        assert r.status_code == 200 and r.content == b"x" * 3000 * 1024
        assert r.headers["x-crucible-call-id"].startswith("rq-")
        with http.stream("GET", f"{api}/slow", params={"n": 3}) as s:
            assert s.status_code == 200
            assert s.headers["x-crucible-call-id"].startswith("rq-")
            assert "".join(s.iter_text()) == "0\n1\n2\n"

        # The app's failure is a 500 without its traceback; the app's own 404 is kept.
        r = http.get(f"{api}/boom")
        assert r.status_code == 500 and r.headers["x-crucible-call-id"].startswith("rq-")
        assert "the endpoint broke" not in r.text
        # The owner finds its error and traceback in the logs by the request's id.
        rid = r.headers["x-crucible-call-id"]
        path = f"/v1/apps/{deployed.app_id}/logs?call_id={rid}&wait_s=0"
        wait_for(
            lambda: any("the endpoint broke" in x["line"] for x in builder.get(path)["lines"]),
            30,
            "the relayed request's log lines",
        )
        assert http.get(f"{api}/nowhere").status_code == 404

        # The container busy with a slow response: the next request does not wait for it
        # (it is a call, or relayed to a second container the scheduler started) and is
        # answered all the same.
        streaming = threading.Event()
        finished = threading.Event()

        def slow() -> None:
            with (
                httpx.Client(timeout=120) as other,
                other.stream("GET", f"{api}/slow", params={"n": 10}) as s,
            ):
                for _ in s.iter_text():
                    streaming.set()
            finished.set()

        thread = threading.Thread(target=slow)
        thread.start()
        assert streaming.wait(60)
        r = http.post(f"{api}/echo", json={"y": 2})
        assert r.status_code == 200 and r.json() == {"got": {"y": 2}}
        thread.join(60)
        assert finished.is_set()

        # The container dies mid-request: the answer comes when its agent reports the exit,
        # not at the function's timeout (300 s), and says what happened.
        http.post(f"{api}/echo", json={"warm": True})
        r = http.get(f"{api}/die", timeout=120)
        assert r.headers["x-crucible-call-id"].startswith("rq-")
        assert r.status_code == 504, r.text
        assert r.json()["error"]["code"] == "container_exited"
