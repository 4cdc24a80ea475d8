"""The SQLite engine's pool keeps the connections it opened: busy moments (many agents'
syncs at once) reuse them instead of opening connections that run the pragmas and parse the
whole schema, to be closed when returned. The most in use at once stays bounded."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import TimeoutError as PoolTimeout

from crucible.server.store import db


def test_connections_opened_in_a_busy_moment_are_kept_for_the_next(tmp_path: Path) -> None:
    engine = db.create_store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    opened: list[object] = []
    event.listen(engine, "connect", lambda conn, record: opened.append(conn))
    try:
        for _ in range(3):  # three busy moments of 10 requests each
            conns = [engine.connect() for _ in range(10)]
            for c in conns:
                assert c.execute(text("SELECT 1")).scalar_one() == 1
            for c in conns:
                c.close()
        # Opened in the first moment, reused in the others (a pool that kept only 4 opened
        # 6 more in each moment: 22 in all).
        assert len(opened) == 10
    finally:
        engine.dispose()


def test_the_most_connections_in_use_at_once_is_bounded(tmp_path: Path) -> None:
    engine = db.create_store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    engine.pool._timeout = 0.2  # type: ignore[attr-defined]  # fail fast instead of 30 s
    held: list[Any] = []
    try:
        held = [engine.connect() for _ in range(db._SQLITE_CONNECTIONS)]
        with pytest.raises(PoolTimeout):
            engine.connect()
        # Returned, one is handed to the next request that waits.
        got: list[Any] = []
        waiter = threading.Thread(target=lambda: got.append(engine.connect()))
        engine.pool._timeout = 10  # type: ignore[attr-defined]
        waiter.start()
        held.pop().close()
        waiter.join(10)
        assert len(got) == 1
        got[0].close()
    finally:
        for c in held:
            c.close()
        engine.dispose()


def test_an_in_memory_store_still_opens(tmp_path: Path) -> None:
    for url in ("sqlite://", "sqlite:///:memory:"):
        engine = db.create_store_engine(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
        engine.dispose()
