"""The market: the book per GPU model (asks, interruptible minimums, standing bids, free and
leased devices), its recent clearing prices as a chart, and a quote form."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import ValidationError

from crucible.errors import Error
from crucible.protocol.gpus import parse_gpu_request
from crucible.protocol.market import QuoteInfo, QuoteRequest
from crucible.server.api.responses import validation_message
from crucible.server.console import charts
from crucible.server.console.format import usd, when
from crucible.server.console.pages.hosts import usd_to_micros
from crucible.server.console.web import ConsoleRoute, Session, page, state_of
from crucible.server.services import orders

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

TIERS = ("on_demand", "interruptible", "reserved")
PREFER = ("cheapest", "greenest", "fastest")


@router.get("/market")
def market_page(
    request: Request,
    session: Session,
    gpu: str | None = Query(default=None, max_length=64),
    quote: str | None = Query(default=None, max_length=64),
    nodes: str | None = Query(default=None, max_length=64),
    tier: str | None = Query(default=None, max_length=64),
    bid: str | None = Query(default=None, max_length=64),
    max_price: str | None = Query(default=None, max_length=64),
    region: str | None = Query(default=None, max_length=64),
    prefer: str | None = Query(default=None, max_length=64),
) -> Response:
    state = state_of(request)
    if gpu:
        parse_gpu_request(gpu)  # a model the catalog does not know: a 400 that names it
    now = state.clock.now_ms()
    with state.engine.connect() as conn:
        orders.fresh(conn, state.market, now)
    books = orders.book(state.market, None, now, session.principal.account_id)
    models = [b.device_type for b in books]
    shown = [b for b in books if not gpu or b.device_type == gpu]
    history = {
        b.device_type: charts.steps(
            f"Clearing prices of {b.device_type}",
            [(c.at_ms, c.price_micros) for c in b.recent],
            usd,
            first=when(min(c.at_ms for c in b.recent)) if b.recent else "",
            last=when(max(c.at_ms for c in b.recent)) if b.recent else "",
        )
        for b in shown
    }
    asked: dict[str, Any] = {
        "gpu": quote or (gpu or (models[0] if models else "")),
        "nodes": nodes or "1",
        "tier": tier or "on_demand",
        "bid": bid or "",
        "max_price": max_price or "",
        "region": region or "",
        "prefer": prefer or "cheapest",
    }
    answer: QuoteInfo | None = None
    error = ""
    if quote:
        try:
            req = QuoteRequest(
                gpu=quote,
                nodes=int(asked["nodes"])
                if str(asked["nodes"]).isascii() and str(asked["nodes"]).isdigit()
                else 0,
                tier=asked["tier"],
                bid_micros=usd_to_micros(bid, "bid") if bid else None,
                max_price_micros=usd_to_micros(max_price, "max price") if max_price else None,
                region=region or None,
                prefer=asked["prefer"],
            )
            answer = orders.quote(state.market, session.principal, req, now)
        except ValidationError as exc:
            error = validation_message(exc.errors())
        except Error as exc:
            error = exc.message
    return page(
        request,
        "market.html",
        title="Market",
        books=shown,
        models=models,
        gpu=gpu or "",
        history=history,
        asked=asked,
        answer=answer,
        error=error,
        tiers=TIERS,
        prefers=PREFER,
        status_code=400 if error else 200,
    )
