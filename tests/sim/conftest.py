"""The simulator's tests: the openb scenarios find the project's copy of the trace."""

from __future__ import annotations

import pytest

from harness import OPENB_TRACE


@pytest.fixture(autouse=True)
def _openb_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    if OPENB_TRACE.is_dir():
        monkeypatch.setenv("CRUCIBLE_OPENB_TRACE_DIR", str(OPENB_TRACE))
