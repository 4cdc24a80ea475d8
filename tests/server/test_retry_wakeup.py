"""A retry after a short delay is handed out when the delay ends: the idle containers of
its function are woken then (a `retry:FN:MS` wake-up). They looked again only at their next
recheck (a second), so `Retries(initial_delay=0.1)` waited about a second."""

from __future__ import annotations

import asyncio

from crucible.protocol.common import ErrorInfo, RetryPolicy
from crucible.server.services import calls as calls_svc
from crucible.server.wakeups import RECHECK_S, Wakeups


def test_a_retry_key_wakes_the_functions_waiters_when_the_delay_ends() -> None:
    async def scenario() -> tuple[bool, bool]:
        wakeups = Wakeups()
        wakeups.bind(asyncio.get_running_loop())
        with wakeups.listen("fn:fn-1") as event:
            wakeups.notify_many(["retry:fn-1:100"])
            early = event.is_set()
            try:
                await asyncio.wait_for(event.wait(), timeout=RECHECK_S / 2)
            except TimeoutError:
                return early, False
            return early, True

    early, woken = asyncio.run(scenario())
    assert not early and woken  # not at once (the call is not due yet), but when it is


def test_a_retry_with_no_idle_container_kicks_the_scheduler_then() -> None:
    async def scenario() -> bool:
        wakeups = Wakeups()
        wakeups.bind(asyncio.get_running_loop())
        wakeups.notify_local(["retry:fn-2:50"])
        try:
            await asyncio.wait_for(wakeups.scheduler.wait(), timeout=RECHECK_S / 2)
        except TimeoutError:
            return False
        return True

    assert asyncio.run(scenario())


def test_a_failed_attempt_queued_after_a_delay_names_when() -> None:
    class Row:
        attempts, infra_requeues, preemptions = 1, 0, 0

    policy = RetryPolicy(max_retries=2, initial_delay_s=0.25, backoff_coefficient=2.0)
    values = calls_svc._failure(Row(), policy, ErrorInfo(code="x", message="y"), "failed", 1_000)
    assert values["state"] == "queued"
    keys = calls_svc._requeued("fn-3", values, 1_000)
    assert keys == ["fn:fn-3", f"retry:fn-3:{values['next_attempt_ms'] - 1_000}"]
    now = {"next_attempt_ms": 1_000}
    assert calls_svc._requeued("fn-3", now, 1_000) == ["fn:fn-3"]
