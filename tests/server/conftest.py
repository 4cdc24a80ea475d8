"""Fixtures for the control-plane tests: the real app in-process on a fresh store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from crucible.server.store.db import create_store_engine, migrate

from server_testlib import ServerUnderTest, World


@pytest.fixture
def make_server(database_url: str, tmp_path: Path) -> Iterator[Callable[..., ServerUnderTest]]:
    """Builds servers on the test's store (settings overrides as keywords); closes them."""
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


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A migrated store."""
    eng = create_store_engine(database_url)
    migrate(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def world(engine: Engine) -> World:
    return World.create(engine)
