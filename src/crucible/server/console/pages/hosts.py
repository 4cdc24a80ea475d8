"""The host owner's pages: their hosts (with whatever isolation and verification the agent
reported), one host's offers with price editing (the service behind `crucible host price`),
its earnings over time and reliability."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import ValidationError

from crucible.errors import InvalidRequestError, NotFoundError
from crucible.protocol.apps import MAX_PRICE_MICROS
from crucible.protocol.hosts import HostInfo
from crucible.protocol.market import HostMarketInfo, OfferUpdate
from crucible.server.api.responses import validation_message
from crucible.server.auth import Principal
from crucible.server.console import charts
from crucible.server.console.format import usd
from crucible.server.console.web import ConsoleRoute, Session, form_data, page, state_of
from crucible.server.services import hosts as hosts_svc
from crucible.server.services import offers
from crucible.server.state import ServerState

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

# HostInfo's fields in every version; any other field (isolation, verification, ...) is
# shown as it comes, so the page keeps up with what agents report.
_BASE_FIELDS = {
    "id",
    "name",
    "region",
    "state",
    "inventory",
    "last_seen_ms",
    "registered_ms",
    "allocated_cpu",
    "allocated_memory_mib",
    "allocated_gpus",
    "containers",
}
PRICE_FIELDS = ("on_demand", "interruptible_min", "reserved")
MEMORY_FIELDS = ("memory_on_demand", "memory_interruptible", "memory_reserved")


def _words(value: Any) -> Any:
    """A nested value (a self-test's figures, a list of reports) as one line of words,
    ``name: value`` pairs, instead of Python's repr of dicts and lists."""
    if isinstance(value, dict):
        return ", ".join(f"{k.replace('_', ' ')}: {_words(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "; ".join(str(_words(v)) for v in value) or "-"
    return "-" if value is None else value


def extras(host: HostInfo) -> list[tuple[str, Any]]:
    """The host's fields beyond the base ones, as (label, value) to show: a mapping's
    entries and a list's items one tag each, anything nested inside them in words."""
    out = []
    for name in type(host).model_fields:
        if name in _BASE_FIELDS:
            continue
        value = getattr(host, name)
        if hasattr(value, "model_dump"):
            value = {k: _words(v) for k, v in value.model_dump(mode="json").items()}
        elif isinstance(value, list):
            value = [
                _words(v.model_dump(mode="json") if hasattr(v, "model_dump") else v) for v in value
            ]
        out.append((name.replace("_", " "), value))
    return out


def _owner(who: Principal) -> str | None:
    return None if who.is_admin else who.account_id


def _host(state: ServerState, who: Principal, host_id: str) -> tuple[HostInfo, HostMarketInfo]:
    with state.engine.connect() as conn:
        infos = [h for h in hosts_svc.list_hosts(conn, _owner(who)) if h.id == host_id]
        market = [
            m
            for m in offers.list_host_market(conn, state.settings, _owner(who))
            if m.host_id == host_id
        ]
    if not infos or not market:
        raise NotFoundError(f"host {host_id} not found among your hosts")
    return infos[0], market[0]


@router.get("/hosts")
def hosts_page(request: Request, session: Session) -> Response:
    state = state_of(request)
    owner = session.principal.account_id  # the page is "my hosts"; the fleet is /admin's
    with state.engine.connect() as conn:
        mine = hosts_svc.list_hosts(conn, owner)
        market = {m.host_id: m for m in offers.list_host_market(conn, state.settings, owner)}
        earned = offers.daily_earnings(conn, session.principal) if mine else None
    return page(
        request,
        "hosts.html",
        title="Hosts",
        hosts=[(h, market.get(h.id), extras(h)) for h in mine],
        earned=earned,
        now_ms=state.clock.now_ms(),
    )


def _host_page(
    request: Request, who: Principal, host_id: str, *, error: str = "", status: int = 200
) -> Response:
    state = state_of(request)
    info, market = _host(state, who, host_id)
    with state.engine.connect() as conn:
        earned = offers.daily_earnings(conn, who, host_id)
    days = sorted(earned.lines, key=lambda x: x.key)
    chart = charts.bars(
        "Earned per day",
        [(x.key, x.earned_micros) for x in days],
        usd,
        first=days[0].key if days else "",
        last=days[-1].key if days else "",
    )
    return page(
        request,
        "host.html",
        status_code=status,
        title=f"Host {info.name}",
        host=info,
        market=market,
        extras=extras(info),
        earned=earned,
        chart=chart,
        error=error,
        saved=request.query_params.get("saved", ""),
        now_ms=state.clock.now_ms(),
    )


@router.get("/hosts/{host_id}")
def host_page(host_id: str, request: Request, session: Session) -> Response:
    return _host_page(request, session.principal, host_id)


def usd_to_micros(text: str, what: str) -> int:
    """Dollars as typed ("2.5", "$0.40") to micro-dollars; a clear error otherwise."""
    cleaned = text.strip().removeprefix("$")
    if "," in cleaned:
        # "2,10" is 2.10 in much of the world and 210 in the rest: never guessed.
        raise InvalidRequestError(
            f"{what}: {text!r} has a comma; write dollars with a dot for the cents and no "
            "thousands separator (like 2.50 or 1500)"
        )
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        raise InvalidRequestError(
            f"{what}: {text!r} is not a price in dollars (like 2.50)"
        ) from None
    if not value.is_finite() or value < 0:
        raise InvalidRequestError(f"{what}: a price is zero or more dollars")
    if value > MAX_PRICE_MICROS // 1_000_000:  # checked before the conversion: 1e999999 is short
        raise InvalidRequestError(
            f"{what}: at most ${MAX_PRICE_MICROS // 1_000_000:,} an hour (is it a typo?)"
        )
    micros = value * 1_000_000
    if micros != micros.to_integral_value():
        raise InvalidRequestError(f"{what}: at most six decimals (a micro-dollar)")
    return int(micros)


@router.post("/hosts/{host_id}/offers")
async def set_price(host_id: str, request: Request, session: Session) -> Response:
    """Set one device type's prices (the form on the host page), like `crucible host price`."""
    state = state_of(request)
    who = session.principal
    fields = await form_data(request, session)
    _host(state, who, host_id)  # NotFound for a host that is not the caller's
    device = fields.get("device_type", "")
    try:
        values = {
            f"{name}_micros": usd_to_micros(fields.get(name, ""), name.replace("_", " "))
            for name in PRICE_FIELDS
        }
        for name in MEMORY_FIELDS:
            if fields.get(name, "").strip():
                values[f"{name}_micros"] = usd_to_micros(fields[name], name.replace("_", " "))
        req = OfferUpdate(device_type=device, **values)
        with state.engine.begin() as conn:
            offers.set_offer(conn, who, host_id, req, state.clock.now_ms())
    except InvalidRequestError as exc:
        return _host_page(request, who, host_id, error=exc.message, status=400)
    except ValidationError as exc:
        return _host_page(request, who, host_id, error=validation_message(exc.errors()), status=400)
    state.market.offers_changed()
    state.wakeups.kick_scheduler()
    return RedirectResponse(f"/hosts/{host_id}?saved={quote(device)}", status_code=303)
