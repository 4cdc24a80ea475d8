"""Rate limits end to end (a real server on loopback): past its token's submit rate, the
SDK waits out Retry-After and resubmits what is safe to repeat (inputs with idempotency
keys, as ``.remote()`` sends them); a submit without keys gets a clear RateLimitedError."""

from __future__ import annotations

from pathlib import Path

import pytest

import crucible
from crucible.protocol.calls import CallsCreate, InputItem
from crucible.protocol.common import Payload

import app_basic
from harness import Exchange


def test_the_sdk_waits_out_retry_after_for_idempotent_submits(tmp_path: Path) -> None:
    ex = Exchange(
        tmp_path,
        f"sqlite:///{tmp_path / 'store.db'}",
        CRUCIBLE_SUBMIT_RATE_PER_S="2",
        CRUCIBLE_SUBMIT_BURST="1",
    )
    ex.start_server()
    try:
        ex.start_agent("host-a")
        client = ex.client(ex.owner_token())
        with app_basic.app.run(client=client):
            # Three submits against a bucket of one: the later ones are answered 429 and
            # resubmitted after Retry-After, and each runs exactly once.
            assert [app_basic.square.remote(i) for i in range(3)] == [0, 1, 4]
            fid = app_basic.square._function_id
            assert fid is not None
            no_key = CallsCreate(inputs=[InputItem(args=Payload.inline(b"\x80\x04K\x02."))])
            with pytest.raises(crucible.RateLimitedError, match="CRUCIBLE_SUBMIT_RATE_PER_S"):
                for _ in range(3):
                    client.create_calls(fid, no_key)
            # Exactly the three .remote() calls and the submits let in: none ran twice.
            calls = client.transport.get("/v1/calls?limit=100")["calls"]
            assert sum(1 for c in calls if c["function_id"] == fid) <= 5
        client.close()
    finally:
        ex.close()
