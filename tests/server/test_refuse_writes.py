"""A connection marked with ``refuse_writes`` runs SELECTs and refuses every other statement
before it reaches the database, so that work tried read-only (a host's sync on the event loop)
leaves nothing behind when it turns out to write; an unmarked connection of the same pool
writes as before."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, column, delete, insert, table, text, update

from crucible.server.store.db import WriteRefused, create_store_engine, refuse_writes

_T = table("t", column("a"))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = create_store_engine(database_url)
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE t (a integer)"))
        conn.execute(insert(_T).values(a=1))
    try:
        yield eng
    finally:
        eng.dispose()


def _values(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return [r.a for r in conn.execute(text("SELECT a FROM t ORDER BY a"))]


@pytest.mark.parametrize(
    "write",
    [
        insert(_T).values(a=2),
        update(_T).values(a=3),
        delete(_T),
        text("INSERT INTO t VALUES (4)"),
        text("  update t SET a = 5"),
        text("DROP TABLE t"),
    ],
    ids=["insert", "update", "delete", "text-insert", "text-update", "ddl"],
)
def test_a_marked_connection_reads_and_refuses_writes(engine: Engine, write: object) -> None:
    with pytest.raises(WriteRefused), engine.begin() as conn:
        refuse_writes(conn)
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 1
        conn.execute(write)  # type: ignore[call-overload]
    assert _values(engine) == [1]  # nothing reached the store


def test_a_write_before_the_refused_one_is_rolled_back(engine: Engine) -> None:
    with pytest.raises(WriteRefused), engine.begin() as conn:
        conn.execute(insert(_T).values(a=7))  # before the mark: allowed
        refuse_writes(conn)
        conn.execute(update(_T).values(a=8))
    assert _values(engine) == [1]  # the whole transaction rolled back


def test_the_mark_ends_with_its_connection(engine: Engine) -> None:
    for _ in range(3):  # the same pooled connection, handed out again
        with engine.begin() as conn:
            refuse_writes(conn)
            conn.execute(text("SELECT 1"))
        with engine.begin() as conn:
            conn.execute(insert(_T).values(a=2))
    assert _values(engine) == [1, 2, 2, 2]
