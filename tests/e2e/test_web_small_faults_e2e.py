"""Small faults of web endpoints, with real processes (tests/apps/app_web_faults.py): an app
that sends no response or a body before its start is a 502 its owner reads about in the
app's logs; every 502 carries the request's id; forwarding headers the client sent in any
spelling never reach the app; a WebSocket's subprotocol and close reason pass both ways;
and `crucible serve` says it keeps watching after a reload that fails."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import crucible

import app_web_faults
from harness import Exchange, wait_for


def _logged(builder: Any, app_id: str, call_id: str, words: str) -> bool:
    """Whether the app's logs hold a line with ``words`` under ``call_id``."""
    page = builder.get(f"/v1/apps/{app_id}/logs?call_id={call_id}&wait_s=0")
    return any(words in x["line"] for x in page["lines"])


def _bad_gateway(r: httpx.Response, *words: str) -> str:
    """The 502's request id, having checked its shape."""
    assert r.status_code == 502, (r.status_code, r.text)
    error = r.json()["error"]
    assert error["code"] == "bad_gateway", r.text
    for word in words:
        assert word in error["message"], r.text
    call_id = r.headers.get("x-crucible-call-id", "")
    assert call_id.startswith(("ca-", "rq-")), r.headers
    assert call_id in error["message"], r.text
    return call_id


def test_an_app_without_a_valid_response_is_a_502_its_owner_reads_about(
    exchange: Exchange,
) -> None:
    token = exchange.owner_token("webfaults")
    builder = exchange.client(token)
    try:
        deployed = app_web_faults.app.deploy(client=builder)
        app_id = deployed.app_id
        base = f"{exchange.url}/web/operator/webfaults"
        with httpx.Client(timeout=120) as http:
            for route, told, logged in (
                ("nosend", "returned without sending a response", "returned without sending"),
                ("bodyfirst", "sent a response body before its start", "before 'http.response"),
            ):
                # Cold (a call: the app runs through the exchange), then warm (relayed).
                seen: set[str] = set()

                def answered(
                    fn: str,
                    route: str = route,
                    told: str = told,
                    logged: str = logged,
                    seen: set[str] = seen,
                ) -> bool:
                    r = http.get(f"{base}/{fn}/{route}")
                    assert "no start" not in r.text  # the app's body is not passed on
                    call_id = _bad_gateway(r)
                    # A web channel's worker tells the gateway that the app answered wrong,
                    # not how: the logs say which.
                    if call_id.startswith("ca-"):
                        assert told in r.json()["error"]["message"], r.text
                    else:
                        assert "sent no valid response" in r.json()["error"]["message"], r.text
                    seen.add(call_id[:3])
                    wait_for(
                        lambda: _logged(builder, app_id, call_id, logged),
                        30,
                        f"the log line of {route} under {call_id}",
                    )
                    return call_id.startswith("rq-")

                answered("spare" if route == "bodyfirst" else "raw")
                wait_for(lambda: answered("raw"), 60, f"a relayed request to {route}")
                assert seen == {"ca-", "rq-"}, seen
    finally:
        builder.close()


def test_an_endpoint_past_its_timeout_is_a_504(exchange: Exchange) -> None:
    """A gateway whose upstream timed out answers 504 (clients and balancers retry it); it
    answered 500 (modal2 F11)."""
    token = exchange.owner_token("webfaults")
    builder = exchange.client(token)
    try:
        app_web_faults.app.deploy(client=builder)
        url = f"{exchange.url}/web/operator/webfaults/hurried/slow"
        with httpx.Client(timeout=120) as http:
            for _ in range(2):  # cold (a call), then again (relayed if a container is warm)
                r = http.get(url)
                assert r.status_code == 504, (r.status_code, r.text)
                assert r.json()["error"]["code"] == "function_timeout", r.text
    finally:
        builder.close()


def test_every_502_carries_the_request_id(exchange: Exchange) -> None:
    token = exchange.owner_token("webfaults")
    builder = exchange.client(token)
    try:
        app_web_faults.app.deploy(client=builder)
        base = f"{exchange.url}/web/operator/webfaults/raw"
        with httpx.Client(timeout=120) as http:
            kinds: set[str] = set()
            for route, words in (("status", "status '700'"), ("crlf", "header HTTP cannot carry")):

                def carried(route: str = route, words: str = words) -> bool:
                    r = http.get(f"{base}/{route}")
                    assert r.status_code == 502 and r.json()["error"]["code"] == "bad_gateway"
                    assert words in r.json()["error"]["message"], r.text
                    call_id = r.headers["x-crucible-call-id"]
                    kinds.add(call_id[:3])
                    return call_id.startswith("rq-")

                carried()
                wait_for(carried, 60, f"a relayed request to {route}")
            assert kinds == {"ca-", "rq-"}, kinds
    finally:
        builder.close()


def test_forwarding_headers_from_the_client_never_reach_the_app(exchange: Exchange) -> None:
    token = exchange.owner_token("webfaults")
    builder = exchange.client(token)
    try:
        app_web_faults.app.deploy(client=builder)
        url = f"{exchange.url}/web/operator/webfaults/raw/seen"
        spoof = [
            ("X_Forwarded_For", "6.6.6.6"),
            ("X_Forwarded_Prefix", "/evil"),
            ("X-Forwarded-Port", "666"),
            ("X-Forwarded-Proto", "gopher"),
            ("x_forwarded_host", "evil.example"),
            ("Forwarded", "for=1.2.3.4;proto=https"),
            ("X-Real-IP", "9.9.9.9"),
            ("X_Real_Ip", "8.8.8.8"),
        ]
        with httpx.Client(timeout=120) as http:
            for _ in range(2):  # cold (a call), then most likely warm (relayed)
                r = http.get(url, headers=httpx.Headers(spoof))
                assert r.status_code == 200, r.text
                seen = json.loads(r.text)
                names = [k for k, _ in seen]
                # The gateway's own, once each; nothing else the client sent of the kind.
                mine = ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"]
                for name in mine:
                    assert names.count(name) == 1, seen
                for name, value in spoof:
                    assert name.lower() in mine or name.lower() not in names, seen
                    assert value not in r.text, seen
                assert dict(seen)["x-forwarded-proto"] == "http"
    finally:
        builder.close()


def test_a_websocket_subprotocol_and_close_reason_pass_both_ways(exchange: Exchange) -> None:
    token = exchange.owner_token("webfaults")
    builder = exchange.client(token)
    try:
        deployed = app_web_faults.app.deploy(client=builder)
        url = exchange.url.replace("http://", "ws://") + "/web/operator/webfaults/raw/ws"
        offered = ["graphql-ws", "other"]
        with connect(url, subprotocols=offered, open_timeout=120) as ws:
            assert ws.subprotocol == "graphql-ws"
            assert json.loads(ws.recv(timeout=60)) == offered
            ws.send("bye")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=60)
        rcvd = closed.value.rcvd
        assert rcvd is not None and (rcvd.code, rcvd.reason) == (4001, "done here")
        # Offered none: none chosen. The client's close code and reason reach the app.
        with connect(url, open_timeout=120) as ws:
            assert ws.subprotocol is None
            assert json.loads(ws.recv(timeout=60)) == []
            ws.close(code=4002, reason="see you")
        # (Read from all of the app's lines: an async app's own prints on the exchange's
        # path carry no call id.)
        logs = f"/v1/apps/{deployed.app_id}/logs?wait_s=0"
        wait_for(
            lambda: any(
                "client left: 4002 'see you'" in x["line"] for x in builder.get(logs)["lines"]
            ),
            30,
            "the app's line about the client's close",
        )
    finally:
        builder.close()


APP = """
import crucible

app = crucible.App("watched")


@app.function()
def version() -> str:
    return "{version}"
"""


def test_serve_says_it_keeps_watching_after_a_reload_that_fails(
    exchange: Exchange, tmp_path: Path
) -> None:
    token = exchange.owner_token("dev")
    client = exchange.client(token)
    src = tmp_path / "proj"
    src.mkdir()
    app_file = src / "watched_app.py"
    app_file.write_text(APP.format(version="one"))
    env = {
        **exchange.process_env(tmp_path / "cli-home"),
        "CRUCIBLE_SERVER_URL": exchange.url,
        "CRUCIBLE_TOKEN": token,
    }
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crucible.cli.main", "serve", str(app_file)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:

        def current() -> str | None:
            try:
                fn = crucible.Function.from_name("watched-dev", "version", client=client)
                return str(fn.remote())
            except crucible.NotFoundError:
                return None

        wait_for(lambda: current() == "one", 60, "first version")
        app_file.write_text("def broken(:\n")  # a change that does not import
        wait_for(lambda: "still watching" in log.read_text(), 60, "the failed redeploy")
        failed = log.read_text()
        assert "SyntaxError" in failed, failed
        assert "run the command" not in " ".join(failed.split()), failed
        app_file.write_text(APP.format(version="two"))  # the fix, saved: served with no restart
        wait_for(lambda: current() == "two", 60, "the fix redeployed")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    client.close()
