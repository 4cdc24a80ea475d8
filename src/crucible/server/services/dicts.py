"""crucible.Dict: durable key/value maps of an account. Keys and values are opaque bytes;
a key is found by its sha256."""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from crucible.errors import InvalidRequestError, QuotaExceededError
from crucible.protocol.coordination import DictEntry, DictInfo, DictItems, DictPut
from crucible.server.auth import Principal
from crucible.server.services.named_objects import delete_object, object_row
from crucible.server.store.locks import lock_row
from crucible.server.store.tables import dict_entries, dicts

__all__ = [
    "clear",
    "contains",
    "delete_dict",
    "dict_info",
    "get_entries",
    "items",
    "list_dicts",
    "pop_entries",
    "put_entries",
]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(f"{what} is not valid base64") from None


def _hash(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()


def dict_info(
    conn: Connection,
    principal: Principal,
    name: str,
    now_ms: int,
    *,
    create: bool = False,
    touch: bool = True,
) -> DictInfo:
    row = object_row(conn, dicts, principal, name, create=create, now_ms=now_ms, touch=touch)
    n, size = conn.execute(
        select(func.count(), func.coalesce(func.sum(func.length(dict_entries.c.value)), 0)).where(
            dict_entries.c.dict_id == row.id
        )
    ).one()
    return DictInfo(
        name=row.name,
        entries=int(n),
        bytes=int(size),
        created_ms=row.created_ms,
        last_used_ms=max(row.last_used_ms, now_ms) if touch else row.last_used_ms,
    )


def list_dicts(conn: Connection, principal: Principal, now_ms: int) -> list[DictInfo]:
    names = conn.execute(
        select(dicts.c.name)
        .where(dicts.c.account_id == principal.account_id)
        .order_by(dicts.c.name)
    ).scalars()
    return [dict_info(conn, principal, n, now_ms, touch=False) for n in names]


def put_entries(
    conn: Connection, principal: Principal, name: str, req: DictPut, now_ms: int, max_entries: int
) -> int:
    """Write entries (last write wins); returns how many were written."""
    row = object_row(conn, dicts, principal, name, create=False, now_ms=now_ms)
    # Held while keys are looked up and written: puts of one new key at once both inserted
    # it (a 500), and skip_if_exists must let one writer only.
    lock_row(conn, dicts, dicts.c.id, row.id)
    written = 0
    fresh: list[dict[str, Any]] = []
    for entry in req.entries:
        key, value = unb64(entry.key, "a key"), unb64(entry.value, "a value")
        key_hash = _hash(key)
        where = (dict_entries.c.dict_id == row.id) & (dict_entries.c.key_hash == key_hash)
        if conn.execute(select(dict_entries.c.key_hash).where(where)).first() is not None:
            if req.skip_if_exists:
                continue
            conn.execute(update(dict_entries).where(where).values(value=value, updated_ms=now_ms))
        else:
            fresh.append(
                {
                    "dict_id": row.id,
                    "key_hash": key_hash,
                    "key": key,
                    "value": value,
                    "updated_ms": now_ms,
                }
            )
        written += 1
    if fresh:
        unique = {r["key_hash"]: r for r in fresh}  # the same key twice in one put: last wins
        have = conn.execute(
            select(func.count()).where(dict_entries.c.dict_id == row.id)
        ).scalar_one()
        if have + len(unique) > max_entries:
            raise QuotaExceededError(
                f"dict {name!r} would hold {have + len(unique)} entries; at most {max_entries} "
                "(CRUCIBLE_DICT_MAX_ENTRIES): delete entries or use another dict"
            )
        conn.execute(insert(dict_entries), list(unique.values()))
    return written


def get_entries(
    conn: Connection, principal: Principal, name: str, keys: list[str], now_ms: int
) -> list[DictEntry]:
    """The entries of the keys present, in the order asked."""
    row = object_row(conn, dicts, principal, name, create=False, now_ms=now_ms)
    hashes = {_hash(unb64(k, "a key")): k for k in keys}
    found = {
        r.key_hash: r.value
        for r in conn.execute(
            select(dict_entries.c.key_hash, dict_entries.c.value).where(
                dict_entries.c.dict_id == row.id, dict_entries.c.key_hash.in_(list(hashes))
            )
        )
    }
    return [DictEntry(key=k, value=b64(found[h])) for h, k in hashes.items() if h in found]


def pop_entries(
    conn: Connection, principal: Principal, name: str, keys: list[str], now_ms: int
) -> list[DictEntry]:
    """The entries of the keys present, in the order asked, deleted. An entry goes to one
    caller only: what this transaction's delete removed (two pops at once each read the
    entries and then deleted them, and both returned them)."""
    row = object_row(conn, dicts, principal, name, create=False, now_ms=now_ms)
    hashes = {_hash(unb64(k, "a key")): k for k in keys}
    taken = {
        r.key_hash: r.value
        for r in conn.execute(
            delete(dict_entries)
            .where(dict_entries.c.dict_id == row.id, dict_entries.c.key_hash.in_(list(hashes)))
            .returning(dict_entries.c.key_hash, dict_entries.c.value)
        )
    }
    return [DictEntry(key=k, value=b64(taken[h])) for h, k in hashes.items() if h in taken]


def contains(conn: Connection, principal: Principal, name: str, key: str, now_ms: int) -> bool:
    return bool(get_entries(conn, principal, name, [key], now_ms))


def items(
    conn: Connection,
    principal: Principal,
    name: str,
    now_ms: int,
    *,
    after: str | None,
    limit: int,
) -> DictItems:
    """A page of entries in key-hash order (stable while the dict is not written)."""
    row = object_row(conn, dicts, principal, name, create=False, now_ms=now_ms)
    query = select(dict_entries.c.key_hash, dict_entries.c.key, dict_entries.c.value).where(
        dict_entries.c.dict_id == row.id
    )
    if after:
        query = query.where(dict_entries.c.key_hash > after)
    rows = conn.execute(query.order_by(dict_entries.c.key_hash).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return DictItems(
        entries=[DictEntry(key=b64(r.key), value=b64(r.value)) for r in rows],
        next_after=rows[-1].key_hash if more and rows else None,
    )


def clear(conn: Connection, principal: Principal, name: str, now_ms: int) -> None:
    row = object_row(conn, dicts, principal, name, create=False, now_ms=now_ms)
    conn.execute(delete(dict_entries).where(dict_entries.c.dict_id == row.id))


def delete_dict(conn: Connection, principal: Principal, name: str) -> None:
    delete_object(conn, dicts, dict_entries, "dict_id", principal, name)
