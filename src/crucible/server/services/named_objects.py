"""Named objects of an account that calls share (dicts and queues): look up, create on first
use, touch (for idle expiry), delete, expire."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from crucible.errors import NotFoundError, PermissionDeniedError, QuotaExceededError
from crucible.protocol.ids import new_id
from crucible.server.auth import Principal

__all__ = ["MAX_PER_ACCOUNT", "delete_object", "expire_idle", "find_object", "object_row"]

# Dicts (and, apart, queues) one account may hold: each is bounded in entries, so this bounds
# what an account stores in them; far beyond what an application names.
MAX_PER_ACCOUNT = 10_000


def _account(principal: Principal) -> str:
    if principal.scope == "host":
        raise PermissionDeniedError("a host token cannot use dicts or queues")
    return principal.account_id


def object_row(
    conn: Connection,
    table: Table,
    principal: Principal,
    name: str,
    *,
    create: bool,
    now_ms: int,
    touch: bool = True,
) -> Any:
    """The row of ``name`` for the caller's account (a builder or one of its running
    containers), created when missing and ``create``; NotFound otherwise. ``touch``: this is
    a use, which postpones the object's idle expiry (looking at it is not)."""
    account = _account(principal)
    row = find_object(conn, table, account, name)
    if row is None and create:
        _check_room(conn, table, account)
        prefix = "di" if table.name == "dicts" else "qu"
        values = {
            "id": new_id(prefix),
            "account_id": account,
            "name": name,
            "created_ms": now_ms,
            "last_used_ms": now_ms,
        }
        try:
            with conn.begin_nested():
                conn.execute(insert(table).values(**values))
        except IntegrityError:  # a concurrent create won: use its row
            pass
        row = find_object(conn, table, account, name)
    if row is None:
        kind = "dict" if table.name == "dicts" else "queue"
        raise NotFoundError(
            f"{kind} {name!r} not found; create it with crucible.{kind.capitalize()}"
            f".from_name({name!r}, create_if_missing=True)"
        )
    if touch and now_ms - row.last_used_ms > 60_000:  # touched at most once a minute
        conn.execute(update(table).where(table.c.id == row.id).values(last_used_ms=now_ms))
    return row


def _check_room(conn: Connection, table: Table, account_id: str) -> None:
    held = conn.execute(
        select(func.count()).select_from(table).where(table.c.account_id == account_id)
    ).scalar_one()
    if held >= MAX_PER_ACCOUNT:
        kind = "dicts" if table.name == "dicts" else "queues"
        raise QuotaExceededError(
            f"your account already has {held} {kind}, the most allowed; delete unused ones "
            f"(`crucible {kind[:-1]} delete NAME`; idle ones expire by themselves)"
        )


def find_object(conn: Connection, table: Table, account_id: str, name: str) -> Any:
    return conn.execute(
        select(table).where(table.c.account_id == account_id, table.c.name == name)
    ).first()


def delete_object(
    conn: Connection, table: Table, children: Table, fk: str, principal: Principal, name: str
) -> None:
    row = find_object(conn, table, _account(principal), name)
    if row is None:
        kind = "dict" if table.name == "dicts" else "queue"
        raise NotFoundError(f"{kind} {name!r} not found")
    conn.execute(delete(children).where(children.c[fk] == row.id))
    conn.execute(delete(table).where(table.c.id == row.id))


def expire_idle(conn: Connection, table: Table, children: Table, fk: str, before_ms: int) -> int:
    """Delete objects last used before ``before_ms``, with their contents."""
    ids = list(conn.execute(select(table.c.id).where(table.c.last_used_ms < before_ms)).scalars())
    if ids:
        conn.execute(delete(children).where(children.c[fk].in_(ids)))
        conn.execute(delete(table).where(table.c.id.in_(ids)))
    return len(ids)
