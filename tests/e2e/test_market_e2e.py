"""The market end to end with real server, agent and worker processes: an on-demand call
preempts a cheaper interruptible one, which checkpoints, is requeued (as a preemption, not a
failure) and completes on another host; metering of the preempted lease stops at the
preemption; refusals and missing credit fail clearly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

import crucible
from crucible.server.billing.entries import check_ledger
from crucible.server.store.tables import containers, meter_intervals

import app_basic
import app_market
from harness import Exchange, wait_for


@pytest.fixture
def market_exchange(tmp_path: Path) -> Iterator[Exchange]:
    ex = Exchange(
        tmp_path,
        f"sqlite:///{tmp_path / 'store.db'}",
        CRUCIBLE_PREEMPTION_GRACE_S="2",
        # Unpriced H100s take bids from $0.378 (20 % of the $1.89 reference).
        CRUCIBLE_DEFAULT_INTERRUPTIBLE_FRACTION="0.2",
    )
    ex.start_server()
    try:
        yield ex
    finally:
        ex.close()


def test_preempted_call_checkpoints_and_completes_elsewhere(
    market_exchange: Exchange, tmp_path: Path
) -> None:
    ex = market_exchange
    ex.start_agent("gpu-a", fake_gpus="1xH100")
    low_token = ex.owner_token("bargain")
    low = ex.client(low_token)
    high = ex.client(ex.owner_token("deadline"))
    work = tmp_path / "work"
    work.mkdir()
    with app_market.app.run(client=low):
        call = app_market.resumable.spawn(str(work), 120)
        wait_for(lambda: low.get_call(call.object_id).state == "running", 60, "call running")
        # "running" is set when the worker takes the call, a moment before the function's
        # first line writes its marker (and registers its stop hook).
        started = wait_for(lambda: next(work.glob("started-*"), None), 30, "function started")
        first = started.name.removeprefix("started-")

        with app_market.rush.run(client=high):
            # The only H100 is leased at a $0.50 bid; $1.89 on demand preempts it.
            winner = app_market.urgent.remote()
        assert winner != first
        assert (work / "checkpoint").read_text() == first  # the stop hook ran
        # Requeued, not failed; it waits for capacity. A second host comes online.
        info = low.get_call(call.object_id)
        assert info.state in ("queued", "running") and info.preemptions == 1
        ex.start_agent("gpu-b", fake_gpus="1xH100")
        result = call.get(timeout=90)
        assert result["resumed_from"] == first and result["container"] not in (first, winner)
        info = low.get_call(call.object_id)
        assert info.state == "succeeded" and info.preemptions == 1 and info.attempts == 2
    # The timeline shows both attempts: the preempted one and the one that succeeded, each
    # with its container, host, phases and cost.
    tl = low.get(f"/v1/calls/{call.object_id}/timeline")
    hist = tl["history"]
    assert [(h["attempt"], h["outcome"]) for h in hist] == [(1, "preempted"), (2, "succeeded")]
    assert [h["container_id"] for h in hist] == [first, result["container"]]
    gpu_a, gpu_b = ex.host("gpu-a"), ex.host("gpu-b")
    assert gpu_a is not None and gpu_b is not None
    assert hist[0]["host_id"] == gpu_a["id"]
    assert hist[1]["host_id"] in (gpu_a["id"], gpu_b["id"])  # wherever an H100 came free
    assert hist[0]["ended_ms"] - hist[0]["started_ms"] > 0 and hist[0]["cost_micros"] > 0
    assert tl["cost_micros"] == sum(h["cost_micros"] for h in hist)
    second_wait = next(p for p in tl["phases"] if p["attempt"] == 2)
    assert second_wait["phase"] == "queued" and second_wait["start_ms"] == hist[0]["ended_ms"]
    assert {p["attempt"] for p in tl["phases"] if p["phase"] == "running"} == {1, 2}
    # The same through `crucible call SHORT-ID` (the id as the tables show it).
    short = call.object_id[:3] + call.object_id[-8:]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    env.update(
        CRUCIBLE_HOME=str(tmp_path / "cli-home"),
        CRUCIBLE_SERVER_URL=ex.url,
        CRUCIBLE_TOKEN=low_token,
        COLUMNS="80",
    )
    out = subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", "call", short],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "preempted" in out.stdout and "succeeded" in out.stdout
    assert first[-8:] in out.stdout and result["container"][-8:] in out.stdout
    assert max(len(line) for line in out.stdout.splitlines()) <= 80
    low.close()
    high.close()

    engine = create_engine(ex.database_url)
    with engine.connect() as conn:
        row = conn.execute(select(containers).where(containers.c.id == first)).one()
        assert row.end_cause == "preempted" and row.tier == "interruptible"
        assert row.unit_price_micros == 500_000
        assert row.lease_end_ms is not None
        wait_for(
            lambda: (
                conn.execute(select(containers.c.state).where(containers.c.id == first)).scalar()
                == "stopped"
            ),
            30,
            "preempted container stopped",
        )
        last = conn.execute(
            select(func.max(meter_intervals.c.end_ms)).where(
                meter_intervals.c.container_id == first
            )
        ).scalar()
        # Metered up to the preemption, not through the grace period.
        assert last is None or last <= row.lease_end_ms
        stopped = conn.execute(
            select(containers.c.stopped_ms).where(containers.c.id == first)
        ).scalar()
        assert stopped >= row.lease_end_ms
        assert check_ledger(conn) == []
    engine.dispose()


def test_market_refusal_fails_calls_clearly(market_exchange: Exchange) -> None:
    ex = market_exchange
    ex.start_agent("gpu-a", fake_gpus="1xH100")
    client = ex.client(ex.owner_token("thrifty"))
    with (
        app_market.rush.run(client=client),
        pytest.raises(crucible.MarketRefusedError, match=r"max_price|\$0.10"),
    ):
        app_market.stingy.remote()
    client.close()


def test_a_carbon_cap_no_host_meets_fails_calls_clearly(market_exchange: Exchange) -> None:
    ex = market_exchange
    ex.start_agent("gpu-a", fake_gpus="1xH100")  # declares no carbon intensity
    client = ex.client(ex.tenant_token("green"))
    with (
        app_market.rush.run(client=client),
        pytest.raises(crucible.MarketRefusedError, match=r"max_carbon_g_per_kwh=50"),
    ):
        app_market.green_only.remote()
    client.close()
    with pytest.raises(crucible.InvalidRequestError, match="max_carbon_g_per_kwh"):
        app_market.rush.function(gpu="H100", max_carbon_g_per_kwh=-3)(lambda: None)


def test_out_of_credit_refuses_work_until_credits_are_granted(tmp_path: Path) -> None:
    ex = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", CRUCIBLE_REQUIRE_CREDITS="1")
    ex.start_server()
    try:
        ex.start_agent("host-a")
        client = ex.client(ex.owner_token("broke"))  # its code runs on the process host
        with app_basic.app.run(client=client):
            with pytest.raises(crucible.InsufficientCreditError, match="credits grant"):
                app_basic.square.remote(3)
            ex.admin.post("/v1/credits/grants", {"account": "operator", "amount_micros": 5_000_000})

            def works() -> bool:
                try:
                    return app_basic.square.remote(4) == 16
                except crucible.InsufficientCreditError:
                    time.sleep(0.2)
                    return False

            wait_for(works, 30, "credit granted")
            assert client.get("/v1/credits")["balance_micros"] <= 5_000_000
        client.close()
    finally:
        ex.close()
