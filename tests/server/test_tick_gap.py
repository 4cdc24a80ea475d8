"""Kicks that come faster than the scheduler ticks are coalesced: the next tick starts no
sooner than three times as long after the last one's start as that tick took (at least
50 ms, at most 1 s), so a busy exchange's fixed chores are paid for many placements at once
(SQLite and PostgreSQL, the real loop on its event loop, the tick itself replaced by one
that takes a known time)."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from crucible.server.scheduler.loop import SchedulerLoop, tick_gap_s

from server_testlib import MakeServer


def test_the_gap_follows_the_last_ticks_duration_within_bounds() -> None:
    assert tick_gap_s(0.001) == 0.05  # a small exchange: the minimum
    assert tick_gap_s(0.1) == pytest.approx(0.3)
    assert tick_gap_s(5.0) == 1.0  # a very slow tick: at most a second


def test_kicks_during_slow_ticks_wait_for_the_gap(make_server: MakeServer) -> None:
    server = make_server()
    loop = SchedulerLoop(server.state)
    ticks: list[tuple[float, float]] = []  # (start, duration) on the event loop's clock

    async def scenario() -> None:
        ev = asyncio.get_running_loop()

        def slow_tick() -> list[str]:
            start = ev.time()
            time.sleep(0.08 if len(ticks) % 2 == 0 else 0.02)
            ticks.append((start, ev.time() - start))
            return []

        loop.tick = slow_tick  # type: ignore[method-assign]
        loop.start()
        try:
            # Kicks all the time, as submissions and reports do on a busy exchange.
            while len(ticks) < 6:
                server.state.wakeups.kick_scheduler()
                await asyncio.sleep(0.005)
        finally:
            await loop.stop()

    asyncio.run(scenario())
    assert len(ticks) >= 6
    for (start, took), (next_start, _) in itertools.pairwise(ticks):
        # Never sooner than the gap (the slack: the hand-offs to the tick's thread, whose
        # delays differ from one tick to the next). The old fixed 50 ms gap fails this.
        assert next_start - start >= tick_gap_s(took) - 0.01, ticks
