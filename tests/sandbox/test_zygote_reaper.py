"""The agent's reaper of idle zygotes (agent/sandbox_runtime.py) and a container that comes for
the same sandbox while it ends: the container gets a live sandbox, never the one being ended.

The reaper ends a zygote before the zygote's reader thread has seen it go: without care, a
start in between was handed the ending sandbox and failed with "the sandbox ended before the
container could start". The test holds the reader's "gone" back to make that window wide."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_testlib import bwrap_or_skip

from crucible.agent.runtimes import build_runtime
from crucible.agent.sandbox_runtime import SandboxRuntime
from crucible.protocol.apps import CodeRef
from crucible.protocol.common import Resources
from crucible.protocol.containers import ContainerAssignment
from crucible.settings import Settings


def _assignment() -> ContainerAssignment:
    return ContainerAssignment(
        container_id="c1",
        function_id="fn1",
        account_id="acct1",
        app_id="app1",
        code=CodeRef(bundle="0" * 64, module="mod", qualname="f"),
        resources=Resources(),
        token="container-token-c1",
    )


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[SandboxRuntime]:
    bwrap_or_skip()
    s = Settings(agent_dir=str(tmp_path / "agent"), runtime="bwrap")
    rt = build_runtime(s, s.agent_path, "http://127.0.0.1:9", worker_argv=None, on_exit=print)
    assert isinstance(rt, SandboxRuntime)
    try:
        yield rt
    finally:
        rt.stop_all(timeout_s=10)


def test_a_start_while_the_reaper_ends_the_sandbox_gets_a_live_one(
    runtime: SandboxRuntime,
) -> None:
    a = _assignment()
    first = runtime._zygote_for(a, None)
    assert first.proc.ready.wait(30), "the zygote did not come up"

    # Hold the reader's "gone" back until the test lets it through.
    release = threading.Event()
    held: list[str] = []
    on_zygote = runtime._on_zygote

    def slow_gone(key: str, msg: dict[str, Any]) -> None:
        if msg.get("op") == "gone":
            held.append(key)
            release.wait(10)
        on_zygote(key, msg)

    runtime._on_zygote = slow_gone  # type: ignore[method-assign]
    # The zygote was built with the bound method: route its messages through the wrapper.
    first.proc.on_message = lambda msg: slow_gone(first.key, msg)

    first.idle_since = time.monotonic() - runtime.limits.zygote_idle_s - 1
    runtime._end_idle_zygotes()
    deadline = time.monotonic() + 10
    while not held and time.monotonic() < deadline:
        time.sleep(0.01)
    assert held == [first.key]  # ended, and its reader has not recorded it yet
    assert not first.gone

    # A start for the same sandbox now: it must wait for the old one and start afresh.
    threading.Timer(0.3, release.set).start()
    second = runtime._zygote_for(a, None)
    assert second is not first
    assert first.gone and first.proc.done.is_set()
    assert second.proc.ready.wait(30), "the new zygote did not come up"
    assert second.proc.proc.poll() is None  # alive
    assert not second.ending and not second.proc.done.is_set()
    assert runtime.zygote_pids() == {second.key: second.proc.pid}
