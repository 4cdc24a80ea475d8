"""The ledger in the store: the shell around :mod:`crucible.core.ledger`.

One row per entry (``ledger_entries``, keyed for idempotency) and one per posting
(``ledger_postings``). Entries are written in the same transaction as whatever caused them
(a metered interval, a grant, a reservation), so a crash keeps both or neither, and posting a
key that is already there changes nothing. Every balance is ``SUM(amount)`` of an account's
postings; :func:`check_ledger` verifies that the whole ledger sums to zero and that every entry
balances.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from crucible.core.ledger import (
    CREDITS_ISSUED,
    MS_PER_DAY,
    CreditStatus,
    EntryKind,
    LedgerAccount,
    MeteredInterval,
    Posting,
    charge_postings,
    credit_status,
    renter_account,
)
from crucible.server.billing.period import Period
from crucible.server.store.bulk import InsertSkipping
from crucible.server.store.tables import accounts, ledger_entries, ledger_postings

__all__ = [
    "EntryContext",
    "NewEntry",
    "account_balance",
    "account_credit",
    "charge_entry",
    "charged_before",
    "check_ledger",
    "grant_credits",
    "post_entries",
    "post_entry",
    "reservation_spend",
    "spent_on_day",
]


@dataclass(frozen=True)
class EntryContext:
    """What an entry concerns, for statements (all optional)."""

    renter: str | None = None
    host_id: str | None = None
    app_id: str | None = None
    function_id: str | None = None
    meter: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    cost_micros: int | None = None


@dataclass(frozen=True)
class NewEntry:
    """An entry to write: its key, kind, time, postings (summing to zero) and context."""

    key: str
    kind: EntryKind
    at_ms: int
    postings: tuple[Posting, ...]
    memo: str = ""
    context: EntryContext = EntryContext()
    reverses: str | None = None


def _entry_row(e: NewEntry) -> dict[str, object]:
    if sum(p.amount for p in e.postings) != 0:
        raise ValueError(f"ledger entry {e.key!r} does not balance")
    c = e.context
    return {
        "key": e.key,
        "kind": e.kind.value,
        "at_ms": e.at_ms,
        "memo": e.memo,
        "renter": c.renter,
        "host_id": c.host_id,
        "app_id": c.app_id,
        "function_id": c.function_id,
        "meter": c.meter,
        "start_ms": c.start_ms,
        "end_ms": c.end_ms,
        "cost_micros": c.cost_micros,
        "reverses": e.reverses,
    }


_INSERT_ENTRIES = InsertSkipping(ledger_entries, "key")
_INSERT_POSTINGS = InsertSkipping(ledger_postings, "entry_key", "account")


def post_entries(conn: Connection, entries: Sequence[NewEntry]) -> None:
    """Write entries and their postings in two batched statements. A key already in the
    ledger is skipped (entry and postings alike: both are keyed), so posting the same entries
    twice changes nothing. Use it where each key's content is fixed by what it records (a
    metered interval of a container); :func:`post_entry` says whether it wrote."""
    if not entries:
        return
    conn.execute(_INSERT_ENTRIES.on(conn), [_entry_row(e) for e in entries])
    conn.execute(
        _INSERT_POSTINGS.on(conn),
        [
            {"entry_key": e.key, "account": str(p.account), "amount_micros": p.amount}
            for e in entries
            for p in e.postings
        ],
    )


def post_entry(
    conn: Connection,
    key: str,
    kind: EntryKind,
    at_ms: int,
    postings: Sequence[Posting],
    *,
    memo: str = "",
    context: EntryContext | None = None,
    reverses: str | None = None,
) -> bool:
    """Write one entry with its postings unless ``key`` is already in the ledger. Returns
    whether it was written. Postings must sum to zero."""
    entry = NewEntry(key, kind, at_ms, tuple(postings), memo, context or EntryContext(), reverses)
    row = _entry_row(entry)
    ins = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = (
        ins(ledger_entries)
        .values(**row)
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(ledger_entries.c.seq)
    )
    if conn.execute(stmt).scalar() is None:
        return False
    conn.execute(
        ledger_postings.insert(),
        [
            {"entry_key": key, "account": str(p.account), "amount_micros": p.amount}
            for p in postings
        ],
    )
    return True


def charge_entry(
    interval: MeteredInterval,
    charged_before: int,
    fee_ppm: int,
    at_ms: int,
    *,
    app_id: str | None = None,
    function_id: str | None = None,
) -> NewEntry:
    """The entry charging one metered interval (renter pays; host and platform fee are
    credited)."""
    return NewEntry(
        key=interval.key,
        kind=EntryKind.CHARGE,
        at_ms=at_ms,
        postings=charge_postings(interval, charged_before, fee_ppm),
        memo=f"{interval.meter} [{interval.start_ms}, {interval.end_ms})",
        context=EntryContext(
            renter=interval.renter,
            host_id=interval.host,
            app_id=app_id,
            function_id=function_id,
            meter=interval.meter,
            start_ms=interval.start_ms,
            end_ms=interval.end_ms,
            cost_micros=interval.cost_micros,
        ),
    )


def grant_credits(
    conn: Connection, key: str, account_id: str, amount_micros: int, at_ms: int, memo: str
) -> bool:
    """An operator grants prepaid credits (idempotent by ``key``)."""
    return post_entry(
        conn,
        key,
        EntryKind.GRANT,
        at_ms,
        (
            Posting(renter_account(account_id), amount_micros),
            Posting(CREDITS_ISSUED, -amount_micros),
        ),
        memo=memo,
        context=EntryContext(renter=account_id),
    )


def account_balance(conn: Connection, account: LedgerAccount) -> int:
    """The sum of the account's postings."""
    total = conn.execute(
        select(func.coalesce(func.sum(ledger_postings.c.amount_micros), 0)).where(
            ledger_postings.c.account == str(account)
        )
    ).scalar()
    return int(total or 0)


def _charged(conn: Connection, account_id: str, *where: Any) -> int:
    """The renter's charges that match ``where``, net of reversed ones."""
    reversed_keys = select(ledger_entries.c.reverses).where(
        ledger_entries.c.kind == EntryKind.REVERSAL.value,
        ledger_entries.c.renter == account_id,
        ledger_entries.c.reverses.is_not(None),
    )
    total = conn.execute(
        select(func.coalesce(func.sum(ledger_entries.c.cost_micros), 0)).where(
            ledger_entries.c.renter == account_id,
            ledger_entries.c.kind == EntryKind.CHARGE.value,
            ledger_entries.c.key.not_in(reversed_keys),
            *where,
        )
    ).scalar()
    return int(total or 0)


def spent_on_day(conn: Connection, account_id: str, day: int) -> int:
    """What the renter was charged for intervals starting on UTC day ``day``, net of
    reversed charges."""
    return _charged(
        conn,
        account_id,
        ledger_entries.c.start_ms >= day * MS_PER_DAY,
        ledger_entries.c.start_ms < (day + 1) * MS_PER_DAY,
    )


def reservation_spend(conn: Connection, account_id: str, period: Period = Period()) -> int:
    """What the renter paid for reservations (their charges are keyed ``rs:``) whose windows
    start within ``period``: the day a reservation counts toward, as the daily cap counts it
    (a window bought today for tomorrow is tomorrow's spend in both)."""
    return _charged(
        conn,
        account_id,
        ledger_entries.c.key.like("rs:%"),
        *period.where(ledger_entries.c.start_ms),
    )


def charged_before(conn: Connection, account_id: str, at_ms: int) -> bool:
    """Whether the renter has a container-time charge (a metered interval's) ending before
    ``at_ms``: one whose interval retention may have pruned."""
    found = conn.execute(
        select(ledger_entries.c.seq)
        .where(
            ledger_entries.c.renter == account_id,
            ledger_entries.c.kind == "charge",
            ledger_entries.c.meter.is_not(None),
            ledger_entries.c.end_ms < at_ms,
        )
        .limit(1)
    ).first()
    return found is not None


def account_credit(conn: Connection, account_id: str, now_ms: int) -> CreditStatus:
    """The renter's balance, today's spend and cap, and whether it may start new work."""
    cap = conn.execute(
        select(accounts.c.daily_cap_micros).where(accounts.c.id == account_id)
    ).scalar()
    return credit_status(
        account_id,
        account_balance(conn, renter_account(account_id)),
        spent_on_day(conn, account_id, now_ms // MS_PER_DAY),
        None if cap is None else int(cap),
    )


def check_ledger(conn: Connection) -> list[str]:
    """Problems with the stored ledger (empty when sound): an entry whose postings do not sum
    to zero, or a ledger whose balances do not sum to zero."""
    problems = [
        f"entry {r.key} sums to {r.total}"
        for r in conn.execute(
            select(ledger_entries.c.key, func.sum(ledger_postings.c.amount_micros).label("total"))
            .join(ledger_postings, ledger_postings.c.entry_key == ledger_entries.c.key)
            .group_by(ledger_entries.c.key)
            .having(func.sum(ledger_postings.c.amount_micros) != 0)
        )
    ]
    total = conn.execute(
        select(func.coalesce(func.sum(ledger_postings.c.amount_micros), 0))
    ).scalar()
    if total:
        problems.append(f"the ledger sums to {total}, not 0")
    return problems
