"""The same exchange on PostgreSQL: calls, maps, retries and a control-plane restart."""

from __future__ import annotations

from pathlib import Path

import pytest

import app_basic
from harness import Exchange

pytestmark = pytest.mark.postgres


def test_calls_and_restart_on_postgres(pg_exchange: Exchange, tmp_path: Path) -> None:
    client = pg_exchange.client(pg_exchange.owner_token("pg-builder"))
    try:
        with app_basic.app.run(client=client):
            assert app_basic.square.remote(9) == 81
            assert list(app_basic.square.map(range(300))) == [x * x for x in range(300)]
            assert app_basic.flaky.remote(str(tmp_path / "m"), 1) == 2
            pending = [app_basic.nap.spawn(0.2) for _ in range(4)]
            pg_exchange.stop_server(kill=True)
            pg_exchange.start_server()
            assert all(p.get(timeout=60) for p in pending)
        bill = client.get("/v1/bill")
        assert {line["function_name"] for line in bill["lines"]} >= {"square", "nap"}
    finally:
        client.close()
