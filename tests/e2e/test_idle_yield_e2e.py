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

from harness import Exchange, wait_for

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
def small_exchange(tmp_path: Path, database_url: str) -> Iterator[Exchange]:
    """One agent on a one-core host, on SQLite and on PostgreSQL."""
    ex = Exchange(tmp_path, database_url)
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
    client = ex.client(ex.tenant_token("yielder"))
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


def test_an_idle_gpu_lease_yields_to_its_own_account_only(tmp_path: Path) -> None:
    # A sandboxed host that isolates fully: the stranger's code may run there at all (a
    # process host would refuse it outright, whatever its leases).
    ex = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", CRUCIBLE_RUNTIME="bwrap")
    ex.start_server()
    owner = ex.client(ex.owner_token("owner"))
    stranger = ex.client(ex.new_account("stranger"))
    try:
        ex.start_agent("gpu-a", fake_gpus="1xH100")
        if not (ex.host("gpu-a") or {}).get("isolated"):
            pytest.skip("this machine's sandbox does not isolate fully (see `crucible hosts`)")
        with contextlib.ExitStack() as stack:
            stack.enter_context(app_yield.gpu_apps[0].run(client=owner))
            first = app_yield.gpu_first.remote()  # its container keeps the H100 for an hour
            # Another account's work waits: an idle on-demand lease is not taken from its
            # renter by others.
            stack.enter_context(app_yield.gpu_apps[2].run(client=stranger))
            waiting = app_yield.gpu_third.spawn()
            info = wait_for(
                lambda: i if (i := stranger.get_call(waiting.object_id)).waiting else None,
                30,
                "the stranger's call to say why it waits",
            )
            assert info.state == "queued", info
            assert (info.waiting or "").startswith("the market: every H100"), info.waiting
            assert "being stopped" not in (info.waiting or "")
            # The lease's own account: its idle container yields the H100.
            stack.enter_context(app_yield.gpu_apps[1].run(client=owner))
            second = app_yield.gpu_second.spawn().get(timeout=120)
            assert second != first
            assert "(yield)" in ex.log("server")
            assert stranger.get_call(waiting.object_id).state == "queued"
    except BaseException:
        print(ex.log("server"))
        print(ex.log("agent-gpu-a"))  # what the agent started, stopped and reported
        raise
    finally:
        owner.close()
        stranger.close()
        ex.close()
