"""What hosts sell: offers per device type, the host's market profile (draining, energy,
carbon), its published reliability, and its earnings from the ledger."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from crucible.core.ledger import MS_PER_DAY, PLATFORM_FEES, format_usd
from crucible.core.market import CPU
from crucible.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from crucible.protocol.gpus import GPU_CATALOG
from crucible.protocol.hosts import HostVerification, IsolationReport, isolation_summary
from crucible.protocol.market import (
    EarningsLine,
    EarningsReport,
    HostMarketInfo,
    HostProfileUpdate,
    OfferInfo,
    OfferUpdate,
)
from crucible.server.auth import Principal
from crucible.server.services import audit
from crucible.server.services.market import default_offer, host_reliability_ppm, offer_of_row
from crucible.server.store.tables import (
    containers,
    host_offers,
    hosts,
    ledger_entries,
    ledger_postings,
    meter_intervals,
    reservations,
)
from crucible.settings import Settings

__all__ = [
    "daily_earnings",
    "earnings",
    "host_market_info",
    "list_host_market",
    "set_offer",
    "set_profile",
]


def _owned_host(conn: Connection, principal: Principal, host_id: str) -> Any:
    """The host row, if the caller owns it (admins own every host)."""
    if principal.scope not in ("admin", "user"):
        raise PermissionDeniedError("hosts are priced by their owner's user token")
    q = select(hosts).where(hosts.c.id == host_id)
    if not principal.is_admin:
        q = q.where(hosts.c.account_id == principal.account_id)
    row = conn.execute(q).first()
    if row is None:
        raise NotFoundError(f"host {host_id} not found among your hosts (`crucible hosts`)")
    return row


def _device_types(row: Any) -> list[str]:
    """What the host offers: its GPUs of catalog models (no builder can ask for another),
    and CPU-only capacity."""
    models = sorted({str(g["model"]) for g in row.inventory.get("gpus", [])} & set(GPU_CATALOG))
    return [*models, CPU]


def set_offer(
    conn: Connection, principal: Principal, host_id: str, req: OfferUpdate, now_ms: int
) -> None:
    """Set a host's terms for one device type. Running leases keep their price."""
    row = _owned_host(conn, principal, host_id)
    types = _device_types(row)
    if req.device_type not in types:
        raise InvalidRequestError(
            f"host {host_id} has no {req.device_type!r} to offer; it has: {', '.join(types)}"
        )
    if req.device_type != CPU and (
        req.memory_on_demand_micros or req.memory_interruptible_micros or req.memory_reserved_micros
    ):
        raise InvalidRequestError(
            "memory is priced separately only for CPU-only capacity (device type 'cpu'); a "
            "GPU's price includes its share of the host's memory"
        )
    for what, floor, ask in (
        ("", req.interruptible_min_micros, req.on_demand_micros),
        ("memory's ", req.memory_interruptible_micros, req.memory_on_demand_micros),
    ):
        if floor > ask:
            raise InvalidRequestError(
                f"the {what}interruptible minimum ({format_usd(floor)}) is above the {what}"
                f"on-demand price ({format_usd(ask)}): interruptible capacity can be taken "
                "back at any moment, so it sells at or below on-demand; lower the one or "
                "raise the other"
            )
    values = {
        "on_demand": req.on_demand_micros,
        "interruptible_min": req.interruptible_min_micros,
        "reserved": req.reserved_micros,
        "memory_on_demand": req.memory_on_demand_micros,
        "memory_interruptible": req.memory_interruptible_micros,
        "memory_reserved": req.memory_reserved_micros,
        "updated_ms": now_ms,
    }
    ins = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    conn.execute(
        ins(host_offers)
        .values(host_id=host_id, device_type=req.device_type, **values)
        .on_conflict_do_update(index_elements=["host_id", "device_type"], set_=values)
    )
    audit.record(
        conn,
        principal,
        "host.offer",
        host_id,
        now_ms,
        account_id=row.account_id,
        **req.model_dump(mode="json"),
    )


def set_profile(
    conn: Connection,
    principal: Principal,
    host_id: str,
    req: HostProfileUpdate,
    now_ms: int,
) -> None:
    row = _owned_host(conn, principal, host_id)
    values = req.model_dump(exclude_none=True)
    if values:
        conn.execute(update(hosts).where(hosts.c.id == host_id).values(**values))
        audit.record(
            conn, principal, "host.profile", host_id, now_ms, account_id=row.account_id, **values
        )


def remove_host(conn: Connection, principal: Principal, host_id: str, now_ms: int) -> None:
    """Take a host off the exchange for good (its owner, or an admin): it leaves the host
    lists and the market. Its agent must have stopped (the host offline or lost), and nothing
    may run or be reserved on it. An agent that registers under its name again brings it
    back, with the same id. Removing a removed host changes nothing."""
    row = _owned_host(conn, principal, host_id)
    if row.state == "removed":
        return
    if row.state == "ready":
        raise ConflictError(
            f"host {host_id} is ready: stop its agent first (`crucible host drain {host_id}` "
            "lets its work finish), then remove it"
        )
    live = conn.execute(
        select(func.count())
        .select_from(containers)
        .where(containers.c.host_id == host_id, containers.c.state != "stopped")
    ).scalar_one()
    if live:
        raise ConflictError(
            f"host {host_id} still has {live} container(s) ending; remove it once they have"
        )
    reserved = [
        r.id
        for r in conn.execute(
            select(reservations.c.id, reservations.c.blocks).where(reservations.c.end_ms > now_ms)
        )
        if any(b.get("host_id") == host_id for b in r.blocks or [])
    ]
    if reserved:
        raise ConflictError(
            f"host {host_id} is reserved ({', '.join(sorted(reserved)[:5])}): renters paid for "
            "its devices; remove it once those reservations have ended"
        )
    conn.execute(update(hosts).where(hosts.c.id == host_id).values(state="removed"))
    audit.record(conn, principal, "host.remove", host_id, now_ms, account_id=row.account_id)


def host_market_info(conn: Connection, row: Any, settings: Settings) -> HostMarketInfo:
    priced = {
        r.device_type: r
        for r in conn.execute(select(host_offers).where(host_offers.c.host_id == row.id))
    }
    offers = []
    for t in _device_types(row):
        r = priced.get(t)
        offer = offer_of_row(r) if r is not None else default_offer(t, settings)
        offers.append(
            OfferInfo(
                device_type=t,
                on_demand_micros=offer.on_demand,
                interruptible_min_micros=offer.interruptible_min,
                reserved_micros=offer.reserved,
                memory_on_demand_micros=offer.memory_on_demand,
                memory_interruptible_micros=offer.memory_interruptible,
                memory_reserved_micros=offer.memory_reserved,
                priced=r is not None,
            )
        )
    rel = host_reliability_ppm(
        row.leases_ended, row.leases_faulted, settings.reliability_prior_leases
    )
    return HostMarketInfo(
        host_id=row.id,
        name=row.name,
        region=row.region,
        state=row.state,
        draining=bool(row.draining),
        reliability=rel / 1_000_000,
        leases_ended=row.leases_ended,
        leases_faulted=row.leases_faulted,
        energy_source=row.energy_source,
        carbon_g_per_kwh=row.carbon_g_per_kwh,
        offers=offers,
        isolated=bool(row.isolated),
        isolation=isolation_summary(
            None if row.isolation is None else IsolationReport.model_validate(row.isolation)
        ),
        verified=bool(row.verified),
        verification=(
            None if row.verification is None else HostVerification.model_validate(row.verification)
        ),
    )


def list_host_market(
    conn: Connection, settings: Settings, owner: str | None = None
) -> list[HostMarketInfo]:
    """Every host's offers and profile: public to renters, as on any marketplace (or those of
    the account ``owner``)."""
    q = select(hosts).where(hosts.c.state != "removed").order_by(hosts.c.registered_ms)
    if owner is not None:
        q = q.where(hosts.c.account_id == owner)
    return [host_market_info(conn, r, settings) for r in conn.execute(q)]


def earnings(
    conn: Connection, principal: Principal, by: str, host_id: str | None = None
) -> EarningsReport:
    """What the caller's hosts earned, per lease or per UTC day: charged to renters, the
    platform fee withheld, and the host's share (all from the ledger's charge entries)."""
    if by not in ("lease", "day"):
        raise InvalidRequestError("by must be 'lease' or 'day'")
    owned = _owned_host_ids(conn, principal, host_id)
    fee = (
        select(ledger_postings.c.amount_micros)
        .where(
            ledger_postings.c.entry_key == ledger_entries.c.key,
            ledger_postings.c.account == str(PLATFORM_FEES),
        )
        .scalar_subquery()
    )
    rows = conn.execute(
        select(
            ledger_entries.c.host_id,
            ledger_entries.c.meter,
            ledger_entries.c.start_ms,
            ledger_entries.c.end_ms,
            ledger_entries.c.cost_micros,
            func.coalesce(fee, 0).label("fee"),
            func.coalesce(meter_intervals.c.energy_mwh, ledger_entries.c.energy_mwh, 0).label(
                "energy_mwh"
            ),
            func.coalesce(meter_intervals.c.carbon_mg, ledger_entries.c.carbon_mg, 0).label(
                "carbon_mg"
            ),
            ledger_entries.c.device_type,
            ledger_entries.c.tier,
        )
        .join(
            meter_intervals,
            (meter_intervals.c.container_id == ledger_entries.c.meter)
            & (meter_intervals.c.start_ms == ledger_entries.c.start_ms),
            isouter=True,
        )
        .where(ledger_entries.c.kind == "charge", ledger_entries.c.host_id.in_(owned))
    ).all()
    kinds = {
        r.id: (r.gpu_model or CPU, r.tier)
        for r in conn.execute(
            select(containers.c.id, containers.c.gpu_model, containers.c.tier).where(
                containers.c.id.in_({r.meter for r in rows})
            )
        )
    }
    # Retention deleted the container (with its stopped app): the charge kept its kind.
    kinds |= {r.meter: (r.device_type, r.tier) for r in rows if r.device_type is not None}
    # A reservation's charge is metered under its id: its devices' model, tier "reserved".
    kinds |= {
        r.id: (r.model, "reserved")
        for r in conn.execute(
            select(reservations.c.id, reservations.c.model).where(
                reservations.c.id.in_({r.meter for r in rows if (r.meter or "").startswith("rs-")})
            )
        )
    }
    lines: dict[tuple[str, str], EarningsLine] = {}
    for r in rows:
        key = r.meter if by == "lease" else _day(r.start_ms)
        line = lines.get((key, r.host_id))
        if line is None:
            model, tier = kinds.get(r.meter, (None, None)) if by == "lease" else (None, None)
            line = lines[(key, r.host_id)] = EarningsLine(
                key=key,
                host_id=r.host_id,
                device_type=model,
                tier=tier,
                ms=0,
                charged_micros=0,
                fee_micros=0,
                earned_micros=0,
            )
        line.ms += r.end_ms - r.start_ms
        line.charged_micros += r.cost_micros
        line.fee_micros += r.fee
        line.earned_micros += r.cost_micros - r.fee
        line.energy_mwh += r.energy_mwh
        line.carbon_mg += r.carbon_mg
    out = sorted(lines.values(), key=lambda x: (x.key, x.host_id))
    return EarningsReport(
        by=by,
        lines=out,
        charged_micros=sum(x.charged_micros for x in out),
        fee_micros=sum(x.fee_micros for x in out),
        earned_micros=sum(x.earned_micros for x in out),
        energy_mwh=sum(x.energy_mwh for x in out),
        carbon_mg=sum(x.carbon_mg for x in out),
    )


def _owned_host_ids(conn: Connection, principal: Principal, host_id: str | None) -> list[str]:
    q = select(hosts.c.id)
    if not principal.is_admin:
        q = q.where(hosts.c.account_id == principal.account_id)
    if host_id is not None:
        q = q.where(hosts.c.id == host_id)
    owned = list(conn.execute(q).scalars())
    if host_id is not None and not owned:
        raise NotFoundError(f"host {host_id} not found among your hosts")
    return owned


def daily_earnings(
    conn: Connection, principal: Principal, host_id: str | None = None
) -> EarningsReport:
    """:func:`earnings` by UTC day, summed by the store (one grouped query over the
    ledger's charge entries, however many there are): what the console charts."""
    owned = _owned_host_ids(conn, principal, host_id)
    day = (ledger_entries.c.start_ms // MS_PER_DAY).label("day")
    fee = func.coalesce(func.sum(ledger_postings.c.amount_micros), 0)
    rows = conn.execute(
        select(
            day,
            ledger_entries.c.host_id,
            func.sum(ledger_entries.c.end_ms - ledger_entries.c.start_ms).label("ms"),
            func.sum(ledger_entries.c.cost_micros).label("charged"),
            fee.label("fee"),
        )
        .select_from(
            ledger_entries.outerjoin(
                ledger_postings,
                (ledger_postings.c.entry_key == ledger_entries.c.key)
                & (ledger_postings.c.account == str(PLATFORM_FEES)),
            )
        )
        .where(ledger_entries.c.kind == "charge", ledger_entries.c.host_id.in_(owned))
        .group_by(day, ledger_entries.c.host_id)
        .order_by(day, ledger_entries.c.host_id)
    ).all()
    out = [
        EarningsLine(
            key=_day(int(r.day) * MS_PER_DAY),
            host_id=r.host_id,
            ms=int(r.ms or 0),
            charged_micros=int(r.charged or 0),
            fee_micros=int(r.fee or 0),
            earned_micros=int(r.charged or 0) - int(r.fee or 0),
        )
        for r in rows
    ]
    return EarningsReport(
        by="day",
        lines=out,
        charged_micros=sum(x.charged_micros for x in out),
        fee_micros=sum(x.fee_micros for x in out),
        earned_micros=sum(x.earned_micros for x in out),
    )


def _day(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms // MS_PER_DAY * 86400, dt.UTC).strftime("%Y-%m-%d")
