"""The web channel with real processes (server/web_channel.py, worker/web_channel.py): a warm
container's worker holds a WebSocket to the server and the gateway's requests go on it, with
no call row; streaming keeps to the reader's pace; a client that leaves does not stall the
container; large bodies travel whole; a container that dies mid-request answers 504 at once;
and only the container itself may open its channel."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from crucible.server.auth import container_token
from crucible.server.store.tables import containers, functions

import app_web_channel
from harness import Exchange, wait_for


def _containers(exchange: Exchange, function: str) -> list[str]:
    engine = create_engine(exchange.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(containers.c.id)
                .join(functions, functions.c.id == containers.c.function_id)
                .where(functions.c.name == function, containers.c.state == "running")
            ).all()
        return [str(r.id) for r in rows]
    finally:
        engine.dispose()


def _refusal(url: str, headers: dict[str, str]) -> tuple[int | None, str]:
    """How the server ends a channel opened with ``headers``: (close code, reason)."""
    with (
        connect(url, additional_headers=headers, open_timeout=10) as ws,
        pytest.raises(ConnectionClosed) as closed,
    ):
        ws.recv(timeout=10)
    rcvd = closed.value.rcvd
    return (rcvd.code, rcvd.reason) if rcvd is not None else (None, "")


def test_requests_go_on_the_container_channel(exchange: Exchange) -> None:
    token = exchange.owner_token("webchan")
    builder = exchange.client(token)
    try:
        _channel(exchange, builder, token)
    finally:
        builder.close()


def _channel(exchange: Exchange, builder: Any, token: str) -> None:
    deployed = app_web_channel.app.deploy(client=builder)
    api = f"{exchange.url}/web/operator/webchan/api"
    with httpx.Client(timeout=120) as http:
        # A request body over the inline limit (2 MiB): cold, it is a call whose input is a
        # blob; warm, it rides the channel whole.
        body = os.urandom(5 * 1024 * 1024)
        want = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        r = http.post(f"{api}/echo", content=body)  # the container starts
        assert r.status_code == 200 and r.json() == want, r.text
        assert r.headers["x-crucible-call-id"].startswith("ca-")

        def relayed_large() -> bool:
            r = http.post(f"{api}/echo", content=body)
            assert r.status_code == 200 and r.json() == want, r.text
            return r.headers["x-crucible-call-id"].startswith("rq-")

        wait_for(relayed_large, 60, "a large request relayed on the channel")

        # Back-pressure: a client that reads nothing holds the app back; what it then reads
        # is the whole response, in order.
        n, kib = 4000, 64  # 250 MiB if nothing held the app back
        with http.stream("GET", f"{api}/flood", params={"key": "f", "n": n, "kib": kib}) as s:
            assert s.status_code == 200 and s.headers["x-crucible-call-id"].startswith("rq-")
            stream = s.iter_bytes()
            got = len(next(stream))

            def held() -> int:
                r = http.get(f"{api}/produced", params={"key": "f"})
                return int(r.json()["produced"])

            first = held()
            wait_for(lambda: held() > 0, 30, "the flood to start")
            # Give an unheld app every chance to run ahead, then check it did not.
            for _ in range(20):
                http.get(f"{api}/produced", params={"key": "warm"})
            assert 0 < held() < n, f"the app ran ahead of its reader: {held()} of {n}"
            assert first < n
            for chunk in stream:
                got += len(chunk)
        assert got == n * kib * 1024

        # A client that leaves mid-stream: the app runs on, the container is free again.
        with http.stream("GET", f"{api}/slow", params={"key": "s", "n": 40}) as s:
            assert s.headers["x-crucible-call-id"].startswith("rq-")
            next(s.iter_bytes())
        wait_for(
            lambda: http.get(f"{api}/produced", params={"key": "s"}).json()["produced"] == -1,
            60,
            "the abandoned stream to end",
        )
        for _ in range(8):  # every slot is free: all relayed
            r = http.post(f"{api}/echo", content=b"after")
            assert r.status_code == 200 and r.headers["x-crucible-call-id"].startswith("rq-")

        # The app's failure: a 500 without its traceback, which its owner finds in the logs
        # under the request's id.
        r = http.get(f"{api}/boom")
        assert r.status_code == 500 and "the endpoint broke" not in r.text
        rid = r.headers["x-crucible-call-id"]
        assert rid.startswith("rq-")
        path = f"/v1/apps/{deployed.app_id}/logs?call_id={rid}&wait_s=0"
        wait_for(
            lambda: any("the endpoint broke" in x["line"] for x in builder.get(path)["lines"]),
            30,
            "the failed request's log lines",
        )

        # Only the container opens its channel: no token, a user token of its own account,
        # another container's token, a forged one: each refused with a reason.
        mine, *others = _containers(exchange, "api")
        url = exchange.url.replace("http://", "ws://") + f"/v1/containers/{mine}/channel"
        secret = (Path(exchange.home) / "secret").read_text().strip()
        others.append(f"co-{uuid.uuid4().hex[:12]}")  # and one that does not exist
        stranger = exchange.new_account("chan-stranger")
        refused = [
            {},
            {"authorization": f"Bearer {token}"},
            {"authorization": f"Bearer {stranger}"},
            {"authorization": f"Bearer {container_token('not-the-secret', mine)}"},
        ]
        refused += [{"authorization": f"Bearer {container_token(secret, o)}"} for o in others]
        for headers in refused:
            code, reason = _refusal(url, headers)
            assert code == 1008 and reason, (headers, code, reason)
        r = http.post(f"{api}/echo", content=b"still mine")  # the channel still serves
        assert r.status_code == 200 and r.headers["x-crucible-call-id"].startswith("rq-")

        # The container dies mid-request: its channel closes and the client gets a 504 now.
        r = http.get(f"{api}/die", timeout=60)
        assert r.headers["x-crucible-call-id"].startswith("rq-")
        assert r.status_code == 504, r.text
        assert r.json()["error"]["code"] == "container_exited"


def test_a_full_channel_takes_no_calls_besides(exchange: Exchange) -> None:
    """A container that takes one request at a time, busy with one on its channel: the next
    request becomes a call, which waits for the container instead of running beside it."""
    token = exchange.owner_token("webchan-single")
    builder = exchange.client(token)
    try:
        app_web_channel.app.deploy(client=builder)
        single = f"{exchange.url}/web/operator/webchan/single"
        with httpx.Client(timeout=120) as http:

            def warm() -> bool:
                r = http.get(f"{single}/hold")
                return r.headers["x-crucible-call-id"].startswith("rq-")

            wait_for(warm, 60, "the channel to serve")
            first: dict[str, Any] = {}

            def hold() -> None:
                with httpx.Client(timeout=120) as other:
                    first["r"] = other.get(f"{single}/hold", params={"s": 3})

            thread = threading.Thread(target=hold)
            thread.start()
            wait_for(
                lambda: http.get(f"{single}/hold").headers["x-crucible-call-id"].startswith("ca-"),
                30,
                "a request that finds the channel full",
            )
            thread.join(60)
            assert first["r"].status_code == 200

            # The other way round: a call from its exchange runs (it queued behind a
            # request on the channel); requests meanwhile find the container busy.
            second: dict[str, Any] = {}

            def queued() -> None:
                with httpx.Client(timeout=120) as other:
                    second["r"] = other.get(f"{single}/hold", params={"s": 3})

            thread = threading.Thread(target=hold)
            thread.start()
            # Nothing can look inside while it holds (one request at a time): give it a moment.
            time.sleep(1.0)
            behind = threading.Thread(target=queued)
            behind.start()
            thread.join(60)
            for _ in range(10):  # while the queued call runs
                assert http.get(f"{single}/hold", params={"s": 0.1}).status_code == 200
            behind.join(60)
            assert second["r"].status_code == 200
            r = http.get(f"{single}/hold")
            assert r.status_code == 200 and r.json()["peak"] == 1, r.json()
    finally:
        builder.close()
