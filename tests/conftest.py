"""Shared fixtures. The exchange harness lives in harness.py; test apps in apps/."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from harness import Exchange

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS / "apps"))
sys.path.insert(0, str(TESTS))

PG_URL = os.environ.get("CRUCIBLE_TEST_POSTGRES_URL", "")
REQUIRE_PG = os.environ.get("CRUCIBLE_REQUIRE_POSTGRES", "") == "1"


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's exchange or tokens."""
    for name in list(os.environ):
        if name.startswith("CRUCIBLE_") and name not in (
            "CRUCIBLE_TEST_POSTGRES_URL",
            "CRUCIBLE_REQUIRE_POSTGRES",
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CRUCIBLE_HOME", str(tmp_path / "home"))


@pytest.fixture(autouse=True)
def _close_openai_clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every official `openai` client a test makes is closed when the test ends, so that its
    pooled connections are not left for the garbage collector to report in a later test."""
    try:
        import openai
    except ImportError:
        yield
        return
    made: list[Any] = []
    original = openai.OpenAI.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(openai.OpenAI, "__init__", init)
    yield
    for client in made:
        client.close()


def _postgres_database() -> Iterator[str]:
    if not PG_URL:
        if REQUIRE_PG:
            pytest.fail("CRUCIBLE_REQUIRE_POSTGRES=1 but CRUCIBLE_TEST_POSTGRES_URL is not set")
        pytest.skip("PostgreSQL tests need CRUCIBLE_TEST_POSTGRES_URL (see scripts/postgres-setup)")
    import psycopg

    name = f"crucible_test_{uuid.uuid4().hex[:12]}"
    admin = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://")
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store: SQLite, and PostgreSQL when a server is configured."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (skips without a server), dropped afterwards."""
    yield from _postgres_database()


@pytest.fixture
def exchange(tmp_path: Path) -> Iterator[Exchange]:
    """A running control plane (SQLite) with one agent, host-a."""
    from harness import Exchange

    ex = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}")
    ex.start_server()
    try:
        ex.start_agent("host-a")
        yield ex
    finally:
        ex.close()


@pytest.fixture
def builder(exchange: Exchange) -> Iterator[Any]:
    """An SDK client of the account that owns the exchange's agent: they run the process
    runtime, which runs only its owner's code (tenancy tests make their own tenants)."""
    client = exchange.client(exchange.owner_token(f"builder-{uuid.uuid4().hex[:6]}"))
    yield client
    client.close()


@pytest.fixture
def pg_exchange(tmp_path: Path) -> Iterator[Exchange]:
    """Like ``exchange`` but on a fresh PostgreSQL database."""
    from harness import Exchange

    for url in _postgres_database():
        ex = Exchange(tmp_path, url)
        ex.start_server()
        try:
            ex.start_agent("host-a")
            yield ex
        finally:
            ex.close()
