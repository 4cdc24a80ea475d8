"""Holds: what metered requests in flight may still cost their callers.

A per-token charge is known only once the engine has answered, so where credits are required
(settings.require_credits) a request first *holds* the most it can be charged
(:meth:`crucible.core.token_bounds.RequestBounds.max_charge_micros`). A hold is placed only if
the caller's balance, less what its other requests in flight hold, covers it (and its daily
cap leaves room for it): concurrent requests therefore never spend the same credit twice, and
no request takes its caller below zero. The hold is removed in the transaction that posts the
request's actual charge (or when the request ends without one), so the ledger itself only
ever holds real charges, balanced to the micro-dollar.

A hold is a row, not a ledger entry: a crash between placing and settling it loses nothing
from the ledger; the orphaned hold lapses at its ``expires_ms`` (:data:`HOLD_TTL_MS` after it
was placed) and is deleted by the caller's next hold.
"""

from __future__ import annotations

from sqlalchemy import Connection, delete, func, select, update

from crucible.core.ledger import format_usd
from crucible.errors import InsufficientCreditError
from crucible.server.billing.entries import account_credit
from crucible.server.store.tables import accounts, token_holds

__all__ = ["HOLD_TTL_MS", "held_micros", "place_hold", "release_hold"]

# Longer than any request should run (a web call's own limits end it well before): a hold
# outliving this is a crash's leftover, not a request still streaming.
HOLD_TTL_MS = 3_600_000


def held_micros(conn: Connection, account_id: str, now_ms: int) -> int:
    """What the account's requests in flight hold now."""
    total = conn.execute(
        select(func.coalesce(func.sum(token_holds.c.amount_micros), 0)).where(
            token_holds.c.account_id == account_id, token_holds.c.expires_ms > now_ms
        )
    ).scalar()
    return int(total or 0)


def place_hold(
    conn: Connection, account_id: str, key: str, amount_micros: int, now_ms: int, what: str
) -> None:
    """Hold ``amount_micros`` of the account's credit under ``key``, or raise
    :class:`InsufficientCreditError` saying why not (``what`` names the request's most, for
    the message). Call inside a transaction; the hold holds once it commits."""
    # Lock the caller's row first (PostgreSQL: a row lock; SQLite: the write lock), so that
    # two requests of one account decide one after the other on the same balance.
    conn.execute(
        update(accounts)
        .where(accounts.c.id == account_id)
        .values(daily_cap_micros=accounts.c.daily_cap_micros)
    )
    conn.execute(
        delete(token_holds).where(
            token_holds.c.account_id == account_id, token_holds.c.expires_ms <= now_ms
        )
    )
    credit = account_credit(conn, account_id, now_ms)
    if not credit.ok:
        raise InsufficientCreditError(credit.reason or "no credit left")
    held = held_micros(conn, account_id, now_ms)
    free = credit.balance - held
    if free < amount_micros:
        raise InsufficientCreditError(
            f"this request may cost up to {format_usd(amount_micros)} ({what}) and your balance "
            f"is {format_usd(credit.balance)}, {format_usd(held)} of it held by your requests "
            "in flight: set a lower max_tokens, send a shorter prompt, or ask the operator for "
            "credits (`crucible credits grant`)"
        )
    cap = credit.daily_cap
    if cap is not None and credit.spent_today + held + amount_micros > cap:
        raise InsufficientCreditError(
            f"this request may cost up to {format_usd(amount_micros)} ({what}), which would "
            f"pass your daily spend cap of {format_usd(cap)} (spent today: "
            f"{format_usd(credit.spent_today)}, held: {format_usd(held)}): raise the cap "
            "(`crucible credits cap`), set a lower max_tokens, or wait for the next UTC day"
        )
    conn.execute(
        token_holds.insert().values(
            key=key,
            account_id=account_id,
            amount_micros=amount_micros,
            expires_ms=now_ms + HOLD_TTL_MS,
        )
    )


def release_hold(conn: Connection, key: str) -> None:
    """Remove the hold ``key`` (nothing when it is already gone)."""
    conn.execute(delete(token_holds).where(token_holds.c.key == key))
