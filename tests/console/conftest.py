"""Fixtures of the console tests: servers in-process (tests/server's), console clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from console_testlib import ConsoleClient, ServerUnderTest


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


@pytest.fixture
def browser(server: ServerUnderTest) -> Iterator[Callable[[], ConsoleClient]]:
    """Makes console clients (each its own cookie jar) on ``server``."""
    made: list[ConsoleClient] = []

    def factory() -> ConsoleClient:
        client = ConsoleClient(server)
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close()
