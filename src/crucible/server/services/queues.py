"""crucible.Queue: durable FIFO queues of an account, in partitions ("" by default). Values
are opaque bytes. ``get`` takes items in the transaction that deletes them, so each item goes
to exactly one getter (on PostgreSQL with SKIP LOCKED, so getters do not wait on each other)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, func, insert, select

from crucible.errors import QuotaExceededError
from crucible.protocol.coordination import QueueInfo, QueuePut
from crucible.server.auth import Principal
from crucible.server.services.dicts import b64, unb64
from crucible.server.services.named_objects import delete_object, object_row
from crucible.server.store.tables import queue_items, queues

__all__ = [
    "clear",
    "delete_queue",
    "list_queues",
    "put_items",
    "queue_id",
    "queue_info",
    "take_items",
]


def queue_id(
    conn: Connection, principal: Principal, name: str, now_ms: int, *, create: bool = False
) -> str:
    return str(object_row(conn, queues, principal, name, create=create, now_ms=now_ms).id)


def queue_info(
    conn: Connection,
    principal: Principal,
    name: str,
    now_ms: int,
    *,
    create: bool = False,
    touch: bool = True,
) -> QueueInfo:
    row = object_row(conn, queues, principal, name, create=create, now_ms=now_ms, touch=touch)
    parts = conn.execute(
        select(
            queue_items.c.partition,
            func.count(),
            func.coalesce(func.sum(func.length(queue_items.c.value)), 0),
        )
        .where(queue_items.c.queue_id == row.id)
        .group_by(queue_items.c.partition)
    ).all()
    return QueueInfo(
        name=row.name,
        items=sum(int(p[1]) for p in parts),
        bytes=sum(int(p[2]) for p in parts),
        partitions={p[0]: int(p[1]) for p in parts},
        created_ms=row.created_ms,
        last_used_ms=max(row.last_used_ms, now_ms) if touch else row.last_used_ms,
    )


def list_queues(conn: Connection, principal: Principal, now_ms: int) -> list[QueueInfo]:
    names = conn.execute(
        select(queues.c.name)
        .where(queues.c.account_id == principal.account_id)
        .order_by(queues.c.name)
    ).scalars()
    return [queue_info(conn, principal, n, now_ms, touch=False) for n in names]


def put_items(
    conn: Connection, principal: Principal, name: str, req: QueuePut, now_ms: int, max_items: int
) -> str:
    """Append values to a partition; returns the queue's id (for wake-ups)."""
    qid = queue_id(conn, principal, name, now_ms)
    have = conn.execute(select(func.count()).where(queue_items.c.queue_id == qid)).scalar_one()
    if have + len(req.values) > max_items:
        raise QuotaExceededError(
            f"queue {name!r} would hold {have + len(req.values)} items; at most {max_items} "
            "(CRUCIBLE_QUEUE_MAX_ITEMS): consume items first"
        )
    rows: list[dict[str, Any]] = [
        {
            "queue_id": qid,
            "partition": req.partition,
            "value": unb64(v, "a value"),
            "created_ms": now_ms,
        }
        for v in req.values
    ]
    conn.execute(insert(queue_items), rows)
    return qid


def take_items(conn: Connection, qid: str, partition: str, n: int) -> list[str]:
    """Remove and return up to ``n`` values from the head of a partition (base64)."""
    query = (
        select(queue_items.c.id, queue_items.c.value)
        .where(queue_items.c.queue_id == qid, queue_items.c.partition == partition)
        .order_by(queue_items.c.id)
        .limit(n)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = conn.execute(query).all()
    if rows:
        conn.execute(delete(queue_items).where(queue_items.c.id.in_([r.id for r in rows])))
    return [b64(r.value) for r in rows]


def clear(
    conn: Connection, principal: Principal, name: str, partition: str | None, now_ms: int
) -> None:
    qid = queue_id(conn, principal, name, now_ms)
    where = queue_items.c.queue_id == qid
    if partition is not None:
        where = where & (queue_items.c.partition == partition)
    conn.execute(delete(queue_items).where(where))


def delete_queue(conn: Connection, principal: Principal, name: str) -> None:
    delete_object(conn, queues, queue_items, "queue_id", principal, name)
