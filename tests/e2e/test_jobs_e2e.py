"""The job API with real processes: a deployed function called with plain HTTP and JSON,
as a client in any language would: run, status, runsync, stream, cancel, and clear errors."""

from __future__ import annotations

import json

import httpx
import pytest

import app_basic
import app_deploy_v2
from harness import Exchange


@pytest.fixture
def http(exchange: Exchange) -> httpx.Client:
    token = exchange.owner_token("polyglot")
    builder = exchange.client(token)
    app_deploy_v2.app.deploy(client=builder)
    builder.close()
    with httpx.Client(
        base_url=exchange.url, headers={"authorization": f"Bearer {token}"}, timeout=120
    ) as client:
        yield client


def test_run_status_runsync_stream(http: httpx.Client) -> None:
    r = http.post("/v1/jobs/svc/greet/run", json={"input": "ada"})
    assert r.status_code == 201 and r.json()["status"] in ("queued", "running", "succeeded")
    job = r.json()["id"]
    done = http.get(f"/v1/jobs/{job}", params={"wait_s": 60}).json()
    assert done["status"] == "succeeded" and done["output"] == {"greeting": "hello ada!"}
    assert done["exec_ms"] is not None

    r = http.post(
        "/v1/jobs/svc/greet/runsync", json={"args": ["bob"], "kwargs": {"punctuation": "?"}}
    )
    assert r.json()["status"] == "succeeded" and r.json()["output"] == {"greeting": "hello bob?"}

    lines = [json.loads(x) for x in http.get(f"/v1/jobs/{job}/stream").text.splitlines()]
    assert lines[-1]["status"] == "succeeded" and lines[-1]["output"]["greeting"] == "hello ada!"

    # The same idempotency key submits once.
    body = {"input": "cy", "idempotency_key": "order-17"}
    first = http.post("/v1/jobs/svc/greet/run", json=body).json()["id"]
    assert http.post("/v1/jobs/svc/greet/run", json=body).json()["id"] == first


def test_job_api_errors_are_clear(http: httpx.Client, exchange: Exchange) -> None:
    r = http.post("/v1/jobs/svc/opaque/runsync", json={})
    assert r.json()["status"] == "failed" and "not JSON" in r.json()["error"]["message"]
    r = http.post("/v1/jobs/nope/greet/run", json={"input": 1})
    assert r.status_code == 404 and "no deployment named 'nope'" in r.text
    r = http.post("/v1/jobs/svc/nope/run", json={"input": 1})
    assert r.status_code == 404 and "no function 'nope'" in r.text
    r = http.post("/v1/jobs/svc/greet/run", json={"input": 1, "args": [2]})
    assert r.status_code == 400 and "not both" in r.text
    assert http.get("/v1/jobs/ca-unknown").status_code == 404
    assert httpx.post(f"{exchange.url}/v1/jobs/svc/greet/run", json={}).status_code == 401

    # A job cancelled before it ran.
    job = http.post("/v1/jobs/svc/slow/run", json={"input": 30}).json()["id"]
    assert http.post(f"/v1/jobs/{job}/cancel").json()["status"] == "cancelled"

    # An SDK call's pickled result is not handed out as JSON (never unpickled).
    token = http.headers["authorization"].split()[1]
    sdk = exchange.client(token)
    with app_basic.app.run(client=sdk):
        call = app_basic.square.spawn(5)
        assert call.get(timeout=60) == 25
    seen = http.get(f"/v1/jobs/{call.object_id}").json()
    assert seen["status"] == "succeeded" and seen["output"] is None
    assert seen["error"]["code"] == "not_json"
    sdk.close()
