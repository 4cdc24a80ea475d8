"""The fine-tune routes in process on SQLite and PostgreSQL: a job is recorded only for the
caller's own model and call, another account never sees or cancels it, its loss is read from
its call's log, and its adapter is registered (and served) once the call succeeds.
(Training end to end is tests/inference/test_model_deploy_e2e.py.)"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import update
from test_openai_api import ASGI, _deploy

from crucible.errors import NotFoundError
from crucible.server.auth import Principal
from crucible.server.services import models as models_svc
from crucible.server.store.tables import calls, log_lines

from server_testlib import ServerUnderTest, error_code


def _setup(server: ServerUnderTest) -> tuple[str, str, str]:
    """alice's model "chat" and one queued call of her trainer function: (token, call, app)."""
    alice = server.tenant("alice").token
    return _setup_for(server, alice)


def _setup_for(server: ServerUnderTest, alice: str) -> tuple[str, str, str]:
    _deploy(server, alice, "chat", ASGI)
    server.ok(
        "POST",
        "/v1/models",
        token=alice,
        json={"name": "chat", "deployment": "chat", "engine": "transformers"},
    )
    app_id = server.new_app(alice, "chat-fine-tune")
    fn = server.new_function(alice, app_id, server.put_blob(alice))
    (call_id,) = server.new_calls(alice, fn)
    return alice, call_id, app_id


def _job(call_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "chat",
        "adapter": "colors",
        "call_id": call_id,
        "rank": 8,
        "epochs": 2,
        "lr": 0.01,
        "examples": 4,
        "data": "train.jsonl",
        **extra,
    }


def test_fine_tune_lifecycle_and_tenancy(server: ServerUnderTest) -> None:
    tenant = server.tenant("alice")
    alice, call_id, app_id = _setup_for(server, tenant.token)
    bob = server.tenant("bob").token

    # Only the caller's own model and call.
    r = server.request("POST", "/v1/fine-tunes", token=bob, json=_job(call_id))
    assert r.status_code == 404 and error_code(r) == "not_found"
    r = server.request(
        "POST", "/v1/fine-tunes", token=alice, json=_job("ca-01m90zzzzzzzzzzzzzzzzzzz")
    )
    assert r.status_code == 404
    for bad in ({"rank": 0}, {"epochs": 5000}, {"lr": 0}, {"method": "full"}, {"adapter": "a b"}):
        r = server.request("POST", "/v1/fine-tunes", token=alice, json=_job(call_id, **bad))
        assert r.status_code == 400, (bad, r.text)

    job = server.ok("POST", "/v1/fine-tunes", token=alice, json=_job(call_id))
    assert job["state"] == "queued" and job["app_id"] == app_id and not job["registered"]
    r = server.request("POST", "/v1/fine-tunes", token=alice, json=_job(call_id))
    assert r.status_code == 400  # one job per call

    # Another account neither sees nor cancels it.
    assert server.ok("GET", "/v1/fine-tunes", token=bob) == []
    for method, path in (
        ("GET", f"/v1/fine-tunes/{job['id']}"),
        ("POST", f"/v1/fine-tunes/{job['id']}/cancel"),
    ):
        assert server.request(method, path, token=bob).status_code == 404
    assert [j["id"] for j in server.ok("GET", "/v1/fine-tunes", token=alice)] == [job["id"]]

    # The loss comes from the trainer's JSON lines in the call's log; other lines are skipped.
    now = 1
    lines = [
        "loading",
        json.dumps({"event": "step", "step": 1, "epoch": 1, "loss": 4.5}),
        "{not json",
        json.dumps({"event": "step", "step": 2, "epoch": 2, "loss": 1.5}),
        json.dumps({"event": "checkpoint", "step": 2, "path": "/model/adapters/c/ck"}),
    ]
    with server.state.engine.begin() as conn:
        for line in lines:
            conn.execute(
                log_lines.insert().values(
                    account_id=tenant.account_id,
                    app_id=app_id,
                    call_id=call_id,
                    container_id="co-x",
                    function_id="fn-x",
                    ts_ms=now,
                    stream="stdout",
                    line=line,
                )
            )
        conn.execute(
            update(calls).where(calls.c.id == call_id).values(state="succeeded", finished_ms=now)
        )

    # The OpenAI route resolves the adapter at once, before anyone has looked at the job.
    with server.state.engine.connect() as conn:
        who = Principal(account_id=tenant.account_id, scope="user")
        resolved = models_svc.resolve(conn, who, "chat:colors")
        assert resolved.adapter is not None
        assert resolved.adapter.path == "/model/adapters/colors"
        with pytest.raises(NotFoundError):
            models_svc.resolve(conn, who, "chat:other")

    shown = server.ok("GET", f"/v1/fine-tunes/{job['id']}", token=alice)
    assert shown["state"] == "succeeded" and shown["registered"]
    assert [(s["step"], s["loss"]) for s in shown["steps"]] == [(1, 4.5), (2, 1.5)]
    assert shown["checkpoints"] == ["/model/adapters/c/ck"]
    adapters = server.ok("GET", "/v1/models/chat", token=alice)["adapters"]
    assert [(a["name"], a["path"]) for a in adapters] == [("colors", "/model/adapters/colors")]

    # Cancelling a finished job changes nothing.
    assert server.ok("POST", f"/v1/fine-tunes/{job['id']}/cancel", token=alice)["state"] == (
        "succeeded"
    )


def test_cancel_cancels_the_call(server: ServerUnderTest) -> None:
    alice, call_id, _ = _setup(server)
    job = server.ok("POST", "/v1/fine-tunes", token=alice, json=_job(call_id))
    done = server.ok("POST", f"/v1/fine-tunes/{job['id']}/cancel", token=alice)
    assert done["state"] == "cancelled" and not done["registered"]
    assert server.ok("GET", f"/v1/calls/{call_id}", token=alice)["state"] == "cancelled"
