"""An agent started from a shell with ``umask 077`` (docs/hosts.md has the operator run it
before writing the host token file) still runs containers: what it shares with its
sandboxes is readable by their users. It measured full isolation and then failed every
container on ``PermissionError: '/crucible/code/...'``, and the renter was charged."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_testlib import SANDBOX_ENV, bwrap_or_skip

import app_basic
from harness import Exchange


@pytest.fixture
def strict_umask_exchange(tmp_path: Path) -> Iterator[Exchange]:
    bwrap_or_skip()
    ex = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", **SANDBOX_ENV)
    ex.start_server()
    old = os.umask(0o077)  # the agent inherits it
    try:
        ex.start_agent("strict")
    finally:
        os.umask(old)
    try:
        yield ex
    finally:
        ex.close()


def test_an_agent_started_under_umask_077_runs_sandboxed_code(
    strict_umask_exchange: Exchange,
) -> None:
    ex = strict_umask_exchange
    client = ex.client(ex.tenant_token("renter", host="strict"))
    try:
        with app_basic.app.run(client=client):
            assert app_basic.square.remote(7) == 49
    finally:
        client.close()
