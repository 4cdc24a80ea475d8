"""A connection of a ``read_only`` engine reads, and every statement that would change the
store fails with WriteRefused before it reaches the database, so that work tried read-only (a
host's sync on the event loop) leaves nothing behind when it turns out to write; the engine it
was made from, on the same pool, writes as before."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, column, delete, insert, table, text, update

from crucible.server.store.db import WriteRefused, create_store_engine, read_only

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
    with pytest.raises(WriteRefused), read_only(engine).begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 1
        conn.execute(write)  # type: ignore[call-overload]
    assert _values(engine) == [1]  # nothing reached the store


def test_a_write_as_driver_sql_is_refused_and_rolled_back(engine: Engine) -> None:
    # The path of store/bulk.execute_many: SQL text straight to the driver.
    with pytest.raises(WriteRefused), read_only(engine).begin() as conn:
        conn.execute(text("SELECT a FROM t")).all()
        conn.exec_driver_sql("UPDATE t SET a = 8")
    assert _values(engine) == [1]  # the whole transaction rolled back


def test_the_engine_it_was_made_from_still_writes(engine: Engine) -> None:
    for _ in range(3):  # the same pooled connection, handed out again
        with read_only(engine).begin() as conn:
            conn.execute(text("SELECT 1"))
        with engine.begin() as conn:
            conn.execute(insert(_T).values(a=2))
    assert _values(engine) == [1, 2, 2, 2]
