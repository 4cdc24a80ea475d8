"""Idle containers yield to queued work, with real processes: four separate apps queued on a
one-core host, each function keeping its idle container for an hour, all finish, because
each idle container is stopped for the next app's queued call instead of waiting out its
scale-down window."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import app_yield
import pytest

from harness import Exchange

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux) for a one-core host"
)


@contextlib.contextmanager
def _one_core() -> Iterator[None]:
    """Processes started inside see one CPU (the agent's inventory reads its affinity)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@pytest.fixture
def small_exchange(tmp_path: Path) -> Iterator[Exchange]:
    ex = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}")
    ex.start_server()
    try:
        with _one_core():
            ex.start_agent("host-a")
        yield ex
    finally:
        ex.close()


def test_queued_apps_take_the_room_of_idle_containers(small_exchange: Exchange) -> None:
    ex = small_exchange
    assert ex.host("host-a")["inventory"]["cpu_cores"] == 1
    client = ex.client(ex.new_account("yielder"))
    try:
        with contextlib.ExitStack() as stack:
            for app in app_yield.apps:
                stack.enter_context(app.run(client=client))
            calls: list[Any] = [f.spawn() for f in app_yield.functions]
            # Each function keeps an idle container for an hour; the host holds one at a
            # time. Without yielding, the second app would wait out the first's hour.
            containers = [c.get(timeout=120) for c in calls]
            assert len(set(containers)) == 4  # one container per app, one after another
            log = ex.log("server")
            assert log.count("(yield)") >= 3, log
    finally:
        client.close()
