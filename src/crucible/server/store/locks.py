"""Holding a row for the rest of a transaction, on both stores, so that a check and the write
it decides are not split by another transaction's (two rollbacks that both saw the same
current version, two creates that both saw a name free).

PostgreSQL: the row's lock (``FOR NO KEY UPDATE``: rows that only refer to it by a foreign key
are not held up). SQLite: a write, which takes the database's write lock for the rest of the
transaction; SQLite's driver starts the transaction at a transaction's first write, so the
reads after it see every commit before it and none after, while reads before it may be stale
(lock first, then read).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Connection, Table, select, update

__all__ = ["lock_row"]


def lock_row(conn: Connection, table: Table, key: Column[Any], value: Any) -> bool:
    """Hold ``table``'s row whose ``key`` is ``value`` until ``conn``'s transaction ends
    (another transaction that locks it waits). Returns whether the row exists."""
    if conn.dialect.name == "postgresql":
        found = conn.execute(
            select(key).where(key == value).with_for_update(key_share=True)
        ).first()
        return found is not None
    return bool(conn.execute(update(table).where(key == value).values({key.name: key})).rowcount)
