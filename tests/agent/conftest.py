"""Fixtures for the agent tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crucible.agent.runtime import ProcessRuntime

from agent_testlib import py


@pytest.fixture
def make_runtime(tmp_path: Path) -> Iterator[Callable[..., ProcessRuntime]]:
    """Builds runtimes under tmp_path and stops whatever they still run at teardown."""
    made: list[ProcessRuntime] = []

    def factory(script: str, **kw: Any) -> ProcessRuntime:
        kw.setdefault("stop_grace_s", 0.3)
        rt = ProcessRuntime(tmp_path / "agent", "http://127.0.0.1:9", worker_argv=py(script), **kw)
        made.append(rt)
        return rt

    yield factory
    for rt in made:
        rt.stop_all(timeout_s=3.0)
