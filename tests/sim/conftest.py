"""The simulator's tests: the openb scenarios find the project's copy of the trace."""

from __future__ import annotations

import pytest

from harness import OPENB_TRACE


@pytest.fixture(autouse=True)
def _openb_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    # Set even where the copy is absent: tests that inject their own loaders never read it,
    # and the ones that read it skip.
    monkeypatch.setenv("CRUCIBLE_OPENB_TRACE_DIR", str(OPENB_TRACE))
