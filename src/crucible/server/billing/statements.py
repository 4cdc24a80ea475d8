"""Credits and statements: operators grant credits and set spend caps; renters read their
balance and statements (per ledger entry, per app, per call) as JSON or CSV."""

from __future__ import annotations

import csv
import io
from typing import Any

from sqlalchemy import Connection, func, or_, select, update

from crucible.core.ledger import renter_account
from crucible.errors import ConflictError, InvalidRequestError, PermissionDeniedError
from crucible.protocol.market import CreditGrant, CreditInfo, DailyCap
from crucible.server.auth import Principal
from crucible.server.billing.entries import account_credit, grant_credits
from crucible.server.billing.period import Period
from crucible.server.services import audit
from crucible.server.services.accounts import account_id_of, own_account
from crucible.server.store.tables import (
    accounts,
    apps,
    calls,
    functions,
    ledger_entries,
    ledger_postings,
    meter_intervals,
)

__all__ = [
    "STATEMENT_KINDS",
    "credit_info",
    "credit_refusal",
    "enforced",
    "grant",
    "recent_entries",
    "set_daily_cap",
    "spend_series",
    "statement",
    "to_csv",
]

STATEMENT_KINDS = ("entries", "apps", "calls")

# A metering charge's interval (its energy and emissions): the entry's meter is the container.
# Once retention pruned the interval, the entry holds its energy and emissions itself.
_INTERVAL_OF_ENTRY = (
    meter_intervals,
    (meter_intervals.c.container_id == ledger_entries.c.meter)
    & (meter_intervals.c.start_ms == ledger_entries.c.start_ms),
)


def _require_admin(principal: Principal, what: str) -> None:
    if not principal.is_admin:
        raise PermissionDeniedError(f"only the exchange's operator (an admin token) can {what}")


def grant(conn: Connection, principal: Principal, req: CreditGrant, now_ms: int) -> CreditInfo:
    _require_admin(principal, "grant credits")
    account_id = account_id_of(conn, req.account)
    key = f"grant:{req.key}" if req.key else f"grant:{account_id}:{now_ms}:{req.amount_micros}"
    if not grant_credits(conn, key, account_id, req.amount_micros, now_ms, req.memo):
        # The key was used before: the same grant again is a replay (nothing more is
        # granted); another grant under it would be silently lost.
        before = conn.execute(
            select(ledger_entries.c.renter, ledger_postings.c.amount_micros)
            .join(ledger_postings, ledger_postings.c.entry_key == ledger_entries.c.key)
            .where(
                ledger_entries.c.key == key,
                ledger_postings.c.account == str(renter_account(account_id)),
            )
        ).first()
        if before is None or int(before.amount_micros) != req.amount_micros:
            raise ConflictError(
                f"the key {req.key!r} was used for another grant; nothing was granted now: "
                "give this grant a key of its own"
            )
        return credit_info(conn, account_id, now_ms)
    audit.record(
        conn,
        principal,
        "credits.grant",
        account_id,
        now_ms,
        account_id=account_id,
        amount_micros=req.amount_micros,
        memo=req.memo,
        key=req.key,
    )
    return credit_info(conn, account_id, now_ms)


def set_daily_cap(conn: Connection, principal: Principal, req: DailyCap, now_ms: int) -> CreditInfo:
    account_id = own_account(conn, principal, req.account)
    conn.execute(
        update(accounts).where(accounts.c.id == account_id).values(daily_cap_micros=req.cap_micros)
    )
    audit.record(
        conn,
        principal,
        "credits.cap",
        account_id,
        now_ms,
        account_id=account_id,
        cap_micros=req.cap_micros,
    )
    return credit_info(conn, account_id, now_ms)


# How long a submission's credit check is trusted for an account (the scheduler re-checks
# every account with work on each tick regardless).
CREDIT_CHECK_TTL_MS = 2_000


def credit_refusal(
    conn: Connection, cache: dict[str, tuple[int, str | None]], account_id: str, now_ms: int
) -> str | None:
    """Why the account may not submit work now (None: it may), checked against the ledger
    at most every :data:`CREDIT_CHECK_TTL_MS` per account."""
    hit = cache.get(account_id)
    if hit is not None and hit[0] > now_ms:
        return hit[1]
    status = account_credit(conn, account_id, now_ms)
    reason = None if status.ok else status.reason
    cache[account_id] = (now_ms + CREDIT_CHECK_TTL_MS, reason)
    return reason


def credit_info(
    conn: Connection, account_id: str, now_ms: int, *, required: bool = True
) -> CreditInfo:
    """The account's credit; ``required``: whether the exchange refuses work without it
    (settings.require_credits), which is what ``ok`` False means to the reader."""
    s = account_credit(conn, account_id, now_ms)
    info = CreditInfo(
        account_id=account_id,
        balance_micros=s.balance,
        spent_today_micros=s.spent_today,
        daily_cap_micros=s.daily_cap,
        ok=s.ok,
        reason=s.reason,
        required=True,
    )
    return enforced(info, required)


def enforced(info: CreditInfo, required: bool) -> CreditInfo:
    """``info`` on an exchange that does (``required``) or does not refuse work without
    credit: where it does not, the reason says that work still runs."""
    if required or info.ok or not info.required:
        return info.model_copy(update={"required": required})
    what = info.reason.split(": new leases", 1)[0]
    return info.model_copy(
        update={
            "required": False,
            "reason": f"{what}; this exchange does not require credit "
            "(CRUCIBLE_REQUIRE_CREDITS is off), so work still runs",
        }
    )


def statement(
    conn: Connection,
    principal: Principal,
    kind: str,
    app_id: str | None = None,
    period: Period = Period(),
) -> list[dict[str, Any]]:
    """The caller's statement lines: every ledger entry that concerns it (``entries``),
    charges per app (``apps``), or each call with its cost carried across retries and
    preemptions (``calls``); within ``period`` (entries by when they were posted, calls by
    their submission).

    An entry concerns the account when it is the entry's renter, or when the entry moved its
    balance: what others paid for its model's tokens. Such an entry is shown as the account
    sees it: kind ``earning``, what it added to the balance (``amount_micros``, after the
    platform fee) and no cost (the caller's cost is the caller's business)."""
    if kind not in STATEMENT_KINDS:
        raise InvalidRequestError(f"a statement is one of {', '.join(STATEMENT_KINDS)}")
    acc = principal.account_id
    if kind == "entries":
        balance = str(renter_account(acc))
        q = (
            select(
                ledger_entries.c.renter,
                ledger_entries.c.seq,
                ledger_entries.c.key,
                ledger_entries.c.kind,
                ledger_entries.c.at_ms,
                ledger_entries.c.app_id,
                ledger_entries.c.function_id,
                ledger_entries.c.meter,
                ledger_entries.c.host_id,
                ledger_entries.c.start_ms,
                ledger_entries.c.end_ms,
                ledger_entries.c.cost_micros,
                func.coalesce(meter_intervals.c.energy_mwh, ledger_entries.c.energy_mwh, 0).label(
                    "energy_mwh"
                ),
                func.coalesce(meter_intervals.c.carbon_mg, ledger_entries.c.carbon_mg, 0).label(
                    "carbon_mg"
                ),
                ledger_entries.c.memo,
                # What the entry did to the account's balance: a grant's amount (+), a
                # charge's cost (-).
                ledger_postings.c.amount_micros,
            )
            .join(*_INTERVAL_OF_ENTRY, isouter=True)
            .join(
                ledger_postings,
                (ledger_postings.c.entry_key == ledger_entries.c.key)
                & (ledger_postings.c.account == balance),
                isouter=True,
            )
            .where(
                or_(
                    ledger_entries.c.renter == acc,
                    ledger_entries.c.key.in_(
                        select(ledger_postings.c.entry_key).where(
                            ledger_postings.c.account == balance
                        )
                    ),
                )
            )
            .order_by(ledger_entries.c.seq)
        )
        if app_id:
            q = q.where(ledger_entries.c.app_id == app_id)
        q = q.where(*period.where(ledger_entries.c.at_ms))
        lines = []
        for r in conn.execute(q):
            line = dict(r._mapping)
            if line.pop("renter") != acc:
                line.update(kind="earning", cost_micros=None)
            lines.append(line)
        return lines
    if kind == "apps":
        q = (
            select(
                ledger_entries.c.app_id,
                apps.c.name.label("app_name"),
                func.count().label("intervals"),
                func.sum(ledger_entries.c.end_ms - ledger_entries.c.start_ms).label("ms"),
                func.sum(ledger_entries.c.cost_micros).label("cost_micros"),
                func.coalesce(
                    func.sum(
                        func.coalesce(meter_intervals.c.energy_mwh, ledger_entries.c.energy_mwh)
                    ),
                    0,
                ).label("energy_mwh"),
                func.coalesce(
                    func.sum(
                        func.coalesce(meter_intervals.c.carbon_mg, ledger_entries.c.carbon_mg)
                    ),
                    0,
                ).label("carbon_mg"),
            )
            .join(apps, apps.c.id == ledger_entries.c.app_id, isouter=True)
            .join(*_INTERVAL_OF_ENTRY, isouter=True)
            .where(ledger_entries.c.renter == acc, ledger_entries.c.kind == "charge")
            .group_by(ledger_entries.c.app_id, apps.c.name)
            .order_by(ledger_entries.c.app_id)
        )
        if app_id:
            q = q.where(ledger_entries.c.app_id == app_id)
        q = q.where(*period.where(ledger_entries.c.at_ms))
        return [
            {**dict(r._mapping), "app_id": r.app_id or "(reservations)"} for r in conn.execute(q)
        ]
    q = (
        select(
            calls.c.id.label("call_id"),
            calls.c.app_id,
            functions.c.name.label("function"),
            calls.c.state,
            calls.c.attempts,
            calls.c.preemptions,
            calls.c.created_ms,
            calls.c.finished_ms,
            calls.c.exec_ms,
            func.coalesce(calls.c.cost_micros, 0).label("cost_micros"),
            calls.c.container_id,
        )
        .join(functions, functions.c.id == calls.c.function_id)
        .where(calls.c.account_id == acc)
        .order_by(calls.c.id)
    )
    if app_id:
        q = q.where(calls.c.app_id == app_id)
    q = q.where(*period.where(calls.c.created_ms))
    rows = [dict(r._mapping) for r in conn.execute(q)]
    _add_call_energy(conn, rows)
    for row in rows:
        row.pop("container_id", None)
    return rows


def _add_call_energy(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Each call's run time at its (last) container's average metered power and emissions
    rate: ``energy_mwh`` and ``carbon_mg`` (0 where nothing was metered)."""
    ids = {r["container_id"] for r in rows if r.get("container_id")}
    rates: dict[str, tuple[int, int, int]] = {}
    if ids:
        for m in conn.execute(
            select(
                meter_intervals.c.container_id,
                func.sum(meter_intervals.c.end_ms - meter_intervals.c.start_ms).label("ms"),
                func.sum(meter_intervals.c.energy_mwh).label("energy"),
                func.sum(meter_intervals.c.carbon_mg).label("carbon"),
            )
            .where(meter_intervals.c.container_id.in_(ids))
            .group_by(meter_intervals.c.container_id)
        ):
            rates[m.container_id] = (int(m.ms or 0), int(m.energy or 0), int(m.carbon or 0))
    for r in rows:
        ms, energy, carbon = rates.get(r.get("container_id") or "", (0, 0, 0))
        run = min(int(r.get("exec_ms") or 0), ms)
        r["energy_mwh"] = energy * run // ms if ms else 0
        r["carbon_mg"] = carbon * run // ms if ms else 0


def to_csv(lines: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    if not lines:
        return ""
    writer = csv.DictWriter(out, fieldnames=list(lines[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(lines)
    return out.getvalue()


def spend_series(
    conn: Connection, account_id: str, since_ms: int, bucket_ms: int
) -> list[tuple[int, int]]:
    """What the account was charged per time bucket since ``since_ms``: (bucket start ms,
    micro-dollars), oldest first, only buckets with charges (one grouped query)."""
    if bucket_ms <= 0:
        raise InvalidRequestError("a bucket is a positive number of milliseconds")
    bucket = (ledger_entries.c.at_ms // bucket_ms).label("bucket")
    rows = conn.execute(
        select(bucket, func.sum(ledger_entries.c.cost_micros))
        .where(
            ledger_entries.c.renter == account_id,
            ledger_entries.c.kind == "charge",
            ledger_entries.c.at_ms >= since_ms,
        )
        .group_by(bucket)
        .order_by(bucket)
    ).all()
    return [(int(b) * bucket_ms, int(total or 0)) for b, total in rows]


def recent_entries(
    conn: Connection, principal: Principal, limit: int = 50, before_seq: int | None = None
) -> list[dict[str, Any]]:
    """A page of the caller's ledger entries, newest first (``before_seq``: the page after
    the entry with that sequence number)."""
    q = select(
        ledger_entries.c.seq,
        ledger_entries.c.kind,
        ledger_entries.c.at_ms,
        ledger_entries.c.app_id,
        ledger_entries.c.meter,
        ledger_entries.c.host_id,
        ledger_entries.c.start_ms,
        ledger_entries.c.end_ms,
        ledger_entries.c.cost_micros,
        ledger_entries.c.memo,
    ).where(ledger_entries.c.renter == principal.account_id)
    if before_seq is not None:
        q = q.where(ledger_entries.c.seq < before_seq)
    rows = conn.execute(q.order_by(ledger_entries.c.seq.desc()).limit(limit))
    return [dict(r._mapping) for r in rows]
