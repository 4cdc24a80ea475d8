"""The PostgreSQL engine's pool: a connection that sat idle is checked before use (and
replaced, with the whole pool, when the server closed it); one used just before is handed out
without a ping, a round trip saved on every transaction of the call path."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text

from crucible.server.store import db

pytestmark = pytest.mark.postgres


def _backend_pid(engine: object) -> int:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _pings(engine: object, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    dialect = engine.dialect  # type: ignore[attr-defined]
    seen: list[object] = []
    real = dialect.do_ping

    def counted(dbapi_conn: object) -> bool:
        seen.append(dbapi_conn)
        return bool(real(dbapi_conn))

    monkeypatch.setattr(dialect, "do_ping", counted)
    return seen


def test_a_connection_closed_while_idle_is_replaced_before_a_request_gets_it(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = db.create_store_engine(postgres_url)
    try:
        first = _backend_pid(engine)
        admin = postgres_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(admin, autocommit=True) as conn:  # PostgreSQL restarted, say
            conn.execute("SELECT pg_terminate_backend(%s)", (first,))
        monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)  # the connection counts as idle
        pings = _pings(engine, monkeypatch)
        second = _backend_pid(engine)  # no error: pinged, found dead, replaced
        assert second != first
        assert len(pings) == 1
    finally:
        engine.dispose()


def test_a_connection_used_just_before_is_not_pinged(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = db.create_store_engine(postgres_url)
    try:
        monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 3600.0)  # nothing is idle that long
        pings = _pings(engine, monkeypatch)
        pids = {_backend_pid(engine) for _ in range(20)}
        assert len(pids) == 1  # the same pooled connection each time...
        assert pings == []  # ...handed out without a round trip first
    finally:
        engine.dispose()
