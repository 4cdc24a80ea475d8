"""Fixtures of the escape suite: one exchange whose agent runs the ``bwrap`` runtime, shared
by the module's tests (sandboxes start in milliseconds; the exchange takes seconds)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from sandbox_testlib import SANDBOX_ENV, bwrap_or_skip

from harness import Exchange


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    """A control plane with one agent, host-a, on the bwrap runtime."""
    bwrap_or_skip()
    root = tmp_path_factory.mktemp("sandboxed")
    ex = Exchange(root, f"sqlite:///{root / 'store.db'}", **SANDBOX_ENV)
    ex.start_server()
    try:
        ex.start_agent("host-a")
        yield ex
    finally:
        ex.close()


@pytest.fixture(scope="module")
def tenant(sandboxed: Exchange) -> Iterator[Any]:
    client = sandboxed.client(sandboxed.tenant_token(f"attacker-{uuid.uuid4().hex[:6]}"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def neighbour(sandboxed: Exchange) -> Iterator[Any]:
    client = sandboxed.client(sandboxed.tenant_token(f"neighbour-{uuid.uuid4().hex[:6]}"))
    yield client
    client.close()
