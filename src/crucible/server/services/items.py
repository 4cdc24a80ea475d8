"""Generator calls: the items a generator function yields, stored in order as its worker
sends them, read by the caller from where it stopped."""

from __future__ import annotations

import base64

from sqlalchemy import Connection, func, select

from crucible.errors import NotFoundError
from crucible.protocol.calls import ItemsPage, ItemsSent
from crucible.protocol.common import Payload
from crucible.server.auth import Principal
from crucible.server.services.calls import decode_payload, get_call
from crucible.server.store.bulk import InsertSkipping
from crucible.server.store.tables import call_inbox, call_items, calls

__all__ = ["append_inbox", "read_inbox", "read_items", "store_items"]

PAGE = 1000
INBOX_PAGE_BYTES = 8 * 1024 * 1024


_INSERT_ITEMS = InsertSkipping(call_items)


def store_items(
    conn: Connection, container_id: str, account_id: str, req: ItemsSent, inline_max: int
) -> None:
    """Store what the call's current attempt yielded. Items already stored (a retried
    request) are kept as they are; items from another container or attempt are refused."""
    row = conn.execute(
        select(calls.c.state, calls.c.container_id, calls.c.attempts).where(
            calls.c.id == req.call_id, calls.c.account_id == account_id
        )
    ).first()
    if row is None or row.container_id != container_id or row.attempts != req.attempt:
        raise NotFoundError(f"call {req.call_id} is not running in container {container_id}")
    rows = []
    for i, item in enumerate(req.items):
        data, ref, size = decode_payload(conn, account_id, item, inline_max)
        rows.append(
            {"call_id": req.call_id, "idx": req.start + i, "data": data, "ref": ref, "size": size}
        )
    if rows:
        conn.execute(_INSERT_ITEMS.on(conn), rows)


def read_items(conn: Connection, principal: Principal, call_id: str, after: int) -> ItemsPage:
    """Items from index ``after`` on (at most a page), and whether the stream is over."""
    info = get_call(conn, principal, call_id)  # NotFound for other accounts
    rows = conn.execute(
        select(call_items)
        .where(call_items.c.call_id == call_id, call_items.c.idx >= after)
        .order_by(call_items.c.idx)
        .limit(PAGE)
    ).all()
    items: list[Payload] = []
    nxt = after
    for r in rows:
        if r.idx != nxt:
            break  # a gap: the rest is still on its way
        if r.ref is not None:
            items.append(Payload(ref=r.ref, size=r.size))
        else:
            items.append(Payload(data=base64.b64encode(r.data).decode("ascii"), size=r.size))
        nxt += 1
    ended = info.state not in ("queued", "running")
    done = ended and len(rows) == len(items) and len(rows) < PAGE
    return ItemsPage(items=items, next=nxt, done=done, call=info)


def append_inbox(conn: Connection, call_id: str, messages: list[str]) -> int:
    """Append a WebSocket client's messages (JSON text) to the call's inbox; returns the
    next index."""
    last = conn.execute(
        select(func.max(call_inbox.c.idx)).where(call_inbox.c.call_id == call_id)
    ).scalar()
    start = -1 if last is None else int(last)
    rows = [
        {"call_id": call_id, "idx": start + 1 + i, "message": m} for i, m in enumerate(messages)
    ]
    if rows:
        conn.execute(call_inbox.insert(), rows)
    return start + 1 + len(rows)


def read_inbox(conn: Connection, container_id: str, call_id: str, after: int) -> list[str]:
    """The inbox of a call running in ``container_id`` from index ``after``."""
    row = conn.execute(select(calls.c.container_id).where(calls.c.id == call_id)).first()
    if row is None or row.container_id != container_id:
        raise NotFoundError(f"call {call_id} is not running in container {container_id}")
    page: list[str] = []
    size = 0
    for r in conn.execute(
        select(call_inbox.c.message)
        .where(call_inbox.c.call_id == call_id, call_inbox.c.idx >= after)
        .order_by(call_inbox.c.idx)
        .limit(PAGE)
    ):
        # A page is bounded in bytes too: the worker holds it whole (1,000 messages of a
        # few MB ran a container out of memory).
        if page and size + len(r.message) > INBOX_PAGE_BYTES:
            break
        page.append(r.message)
        size += len(r.message)
    return page
