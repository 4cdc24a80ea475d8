"""Fixtures of the attacker's tests: the real app in-process (tests/server's
ServerUnderTest) on a fresh store, SQLite and PostgreSQL, with two accounts."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "server"))
sys.path.insert(0, str(Path(__file__).parent.parent / "console"))

from server_testlib import ServerUnderTest


@pytest.fixture
def make_server(database_url: str, tmp_path: Path) -> Iterator[Callable[..., ServerUnderTest]]:
    made: list[ServerUnderTest] = []

    def factory(**overrides: Any) -> ServerUnderTest:
        server = ServerUnderTest(tmp_path / f"home-{len(made)}", database_url, **overrides)
        made.append(server)
        return server

    yield factory
    for server in made:
        server.close()


@pytest.fixture
def server(make_server: Callable[..., ServerUnderTest]) -> ServerUnderTest:
    return make_server()
