"""The market from the terminal: `crucible host price|drain|profile|earnings`, `crucible
market [quote|hosts]`, `crucible reserve`, `crucible reservations`, `crucible credits` and
`crucible statement`. Prices are typed in dollars per device-hour and sent in micro-dollars."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import typer

from crucible.cli._confirm import YES, confirm
from crucible.cli._ids import resolve_id
from crucible.cli._output import (
    clean,
    console,
    fmt_co2,
    fmt_kwh,
    fmt_ms,
    fmt_time,
    fmt_usd,
    print_json,
    shown,
    table,
)
from crucible.cli._when import SINCE, UNTIL, period_query, when_ms
from crucible.cli.resources import (
    JSON,
    MAX_CARBON,
    MIN_RELIABILITY,
    PREFER,
    REGION,
    VERIFIED,
    _client,
    check_market_options,
    resolve_app,
)
from crucible.errors import InvalidRequestError
from crucible.protocol.hosts import verification_summary
from crucible.protocol.market import (
    BookInfo,
    CreditInfo,
    EarningsReport,
    HostMarketInfo,
    QuoteInfo,
    QuoteTerms,
    ReservationInfo,
)
from crucible.protocol.transport import url_part

__all__ = ["register"]


def _micros(usd: float | None, what: str) -> int | None:
    if usd is None:
        return None
    if not 0 <= usd <= 1000:
        raise InvalidRequestError(f"{what} must be dollars per hour in [0, 1000], got {usd}")
    return round(usd * 1_000_000)


HOST = typer.Argument(..., help="The host's id or short id (`crucible hosts` lists them).")


def _tier(tier: str) -> str:
    t = tier.replace("-", "_")
    if t not in ("on_demand", "interruptible", "reserved"):
        raise InvalidRequestError(f"--tier {tier!r}: use on-demand, interruptible or reserved")
    return t


def _quote_line(q: QuoteTerms, *, asked: str = "") -> str:
    """A quote in one line (markup): ``asked`` and the tier it is for, the unit price, the
    hosts and the rate in all; or why it is not available (and the bid that would win)."""
    if not q.available:
        line = f"{asked}[red]not available[/] ({shown(q.refusal)}): {shown(q.message)}"
        if q.min_winning_bid_micros is not None and "would win now" not in (q.message or ""):
            line += f"\na bid of {fmt_usd(q.min_winning_bid_micros)}/GPU-hour would win now"
        return line
    return (
        f"{asked}{(q.tier or '').replace('_', '-')}: "
        # Several hosts: the price is the highest of theirs.
        + ("up to " if len(q.hosts) > 1 else "")
        + f"{fmt_usd(q.price_micros)}/GPU-hour on {shown(', '.join(q.hosts))}; "
        f"{fmt_usd(q.rate_micros_per_hour)}/hour in all"
        + (f"; would preempt {q.preempts} lease(s)" if q.preempts else "")
    )


def _block(r: ReservationInfo) -> str:
    """A reservation's devices: ``8xH100``, or ``2 nodes of 8xH100`` (``1x1xH100`` read as a
    typo)."""
    devices = f"{r.count}x{r.model}"
    return devices if r.nodes == 1 else f"{r.nodes} nodes of {devices}"


def _start_ms(text: str) -> int:
    return when_ms("--start", text)


def _print_host(h: HostMarketInfo) -> None:
    carbon = "undeclared" if h.carbon_g_per_kwh is None else f"{h.carbon_g_per_kwh} gCO2/kWh"
    console.print(
        f"{shown(h.name)} ({h.host_id}) {shown(h.region)}, {h.state}"
        f"{', draining' if h.draining else ''}; "
        f"reliability {h.reliability:.3f}; {shown(h.energy_source)}, {carbon}"
    )
    # The agent's and the server's own words: printed as text, never as markup.
    owner_only = "" if h.isolated else " (runs only its owner's code)"
    console.print(f"  isolation: {shown(h.isolation or 'unknown')}{owner_only}")
    console.print(f"  verified: {shown(verification_summary(h.verified, h.verification))}")
    table(
        "Offers ($/device-hour; cpu: $/core-hour + $/GiB-hour)",
        ["device", "on-demand", "interruptible min", "reserved", "priced by host"],
        [
            (
                o.device_type,
                fmt_usd(o.on_demand_micros)
                + (
                    f" + {fmt_usd(o.memory_on_demand_micros)}/GiB"
                    if o.memory_on_demand_micros
                    else ""
                ),
                fmt_usd(o.interruptible_min_micros),
                fmt_usd(o.reserved_micros),
                "yes" if o.priced else "default",
            )
            for o in h.offers
        ],
    )


def _span(line: dict[str, Any]) -> str:
    start, end = line.get("start_ms"), line.get("end_ms")
    return "" if start is None or end is None else fmt_ms(end - start)


# What `crucible statement` shows of each kind in a terminal (the CSV has every field).
def _entry_cost(x: dict[str, Any]) -> str:
    """A charge's cost, or what another entry added to the balance (a grant: +$5.00)."""
    if x.get("cost_micros") is not None:
        return fmt_usd(x["cost_micros"])
    amount = x.get("amount_micros")
    if not amount:
        return "-"
    return f"+{fmt_usd(amount)}" if amount > 0 else fmt_usd(-amount)


_STATEMENT_VIEWS: dict[str, list[tuple[str, Callable[[dict[str, Any]], Any]]]] = {
    "entries": [
        ("seq", lambda x: x.get("seq")),
        ("kind", lambda x: x.get("kind")),
        ("at (UTC)", lambda x: fmt_time(x.get("at_ms"))),
        ("app", lambda x: x.get("app_id")),
        ("meter", lambda x: x.get("meter")),
        ("time", _span),
        ("cost", _entry_cost),
        # A charge's memo repeats its meter and interval: shown for grants and the like.
        ("memo", lambda x: "" if x.get("kind") == "charge" else x.get("memo")),
    ],
    "apps": [
        ("app", lambda x: x.get("app_id")),
        ("name", lambda x: x.get("app_name")),
        ("intervals", lambda x: x.get("intervals")),
        ("container time", lambda x: fmt_ms(x.get("ms"))),
        ("cost", lambda x: fmt_usd(x.get("cost_micros"))),
    ],
    "calls": [
        ("call", lambda x: x.get("call_id")),
        ("function", lambda x: x.get("function")),
        ("state", lambda x: x.get("state")),
        ("tries", lambda x: x.get("attempts")),
        ("preempt", lambda x: x.get("preemptions")),
        ("run time", lambda x: fmt_ms(x.get("exec_ms"))),
        ("cost", lambda x: fmt_usd(x.get("cost_micros"))),
        ("finished (UTC)", lambda x: fmt_time(x.get("finished_ms"))),
    ],
}
_ID_HEADERS = ("app", "meter", "call")
# Commands whose arguments are amounts: "-5" is read as an argument (the command says why a
# negative amount is refused), not as an unknown option ("No such option: -5").
NUMBERS = {"ignore_unknown_options": True}


def _current_offer(client: Any, host_id: str, device: str) -> dict[str, Any]:
    """The host's terms for ``device`` now (its own prices, or the exchange's defaults); empty
    when it has no such device (the server then says what it has)."""
    for h in client.get("/v1/market/hosts"):
        if h["host_id"] == host_id:
            return next((o for o in h["offers"] if o["device_type"] == device), {})
    return {}


def register(app: typer.Typer) -> None:
    host_app = typer.Typer(help="Your hosts in the market: prices, draining, earnings.")
    app.add_typer(host_app, name="host")

    @host_app.command("price")
    def host_price(
        host_id: str = HOST,
        device: str = typer.Argument(..., help="A GPU model the host has, or 'cpu'."),
        on_demand: float = typer.Option(None, "--on-demand", help="$/device-hour."),
        interruptible_min: float = typer.Option(
            None, "--interruptible-min", help="Lowest interruptible bid accepted, $/device-hour."
        ),
        reserved: float = typer.Option(None, "--reserved", help="Reserved price, $/device-hour."),
        memory: float = typer.Option(None, "--memory", help="cpu only: on-demand $/GiB-hour."),
        memory_interruptible: float = typer.Option(
            None, "--memory-interruptible", help="cpu only: $/GiB-hour (default: --memory)."
        ),
        memory_reserved: float = typer.Option(
            None, "--memory-reserved", help="cpu only: $/GiB-hour (default: --memory)."
        ),
        as_json: bool = JSON,
    ) -> None:
        """Set a host's prices for one device type (running leases keep their price); a price
        not given keeps its current value."""
        given = {
            "on_demand_micros": _micros(on_demand, "--on-demand"),
            "interruptible_min_micros": _micros(interruptible_min, "--interruptible-min"),
            "reserved_micros": _micros(reserved, "--reserved"),
            "memory_on_demand_micros": _micros(memory, "--memory"),
        }
        mem_int = _micros(memory_interruptible, "--memory-interruptible")
        mem_rsv = _micros(memory_reserved, "--memory-reserved")
        if given["memory_on_demand_micros"] is not None:
            # The other memory prices follow --memory unless given.
            mem = given["memory_on_demand_micros"]
            mem_int = mem if mem_int is None else mem_int
            mem_rsv = mem if mem_rsv is None else mem_rsv
        given["memory_interruptible_micros"] = mem_int
        given["memory_reserved_micros"] = mem_rsv
        if all(v is None for v in given.values()):
            raise InvalidRequestError(
                "give at least one price: --on-demand, --interruptible-min, --reserved (and for "
                "cpu --memory, --memory-interruptible, --memory-reserved), in $ per hour"
            )
        client = _client()
        host_id = resolve_id(client, host_id, "ho")
        # Prices not given keep the host's current ones (read only when some are missing).
        missing = any(v is None for v in given.values())
        current = _current_offer(client, host_id, device) if missing else {}
        body = {
            "device_type": device,
            **{k: (current.get(k, 0) if v is None else v) for k, v in given.items()},
        }
        data = client.transport.request("PUT", f"/v1/hosts/{url_part(host_id)}/offers", body)
        info = HostMarketInfo.model_validate(data)
        print_json(info.model_dump()) if as_json else _print_host(info)

    @host_app.command("drain")
    def host_drain(
        host_id: str = HOST, undo: bool = typer.Option(False, "--undo", help="Take leases again.")
    ) -> None:
        """Stop taking new leases; running ones finish (`--undo` to list the host again)."""
        client = _client()
        host_id = resolve_id(client, host_id, "ho")
        client.transport.request(
            "PATCH", f"/v1/hosts/{url_part(host_id)}/profile", {"draining": not undo}
        )
        console.print(f"{host_id} is {'taking leases again' if undo else 'draining'}")

    @host_app.command("remove")
    def host_remove(host_id: str = HOST, yes: bool = YES) -> None:
        """Take a host off the exchange for good (its agent stopped, nothing runs or is reserved
        on it); an agent that registers under its name again brings it back. Asks first;
        --yes does not."""
        client = _client()
        host_id = resolve_id(client, host_id, "ho")
        confirm(f"Take host {clean(host_id)} off the exchange for good?", yes)
        client.transport.request("DELETE", f"/v1/hosts/{url_part(host_id)}")
        console.print(f"removed host {host_id}", markup=False)

    host_app.command("rm", hidden=True)(host_remove)

    @host_app.command("profile")
    def host_profile(
        host_id: str = HOST,
        energy_source: str = typer.Option(None, "--energy-source", help="e.g. hydro, solar."),
        carbon: int = typer.Option(
            None, "--carbon", min=0, max=5000, help="Carbon intensity, gCO2/kWh (0-5000)."
        ),
    ) -> None:
        """Declare a host's energy source and carbon intensity (shown in its offers)."""
        body = {"energy_source": energy_source, "carbon_g_per_kwh": carbon}
        client = _client()
        host_id = resolve_id(client, host_id, "ho")
        data = client.transport.request(
            "PATCH",
            f"/v1/hosts/{url_part(host_id)}/profile",
            {k: v for k, v in body.items() if v is not None},
        )
        _print_host(HostMarketInfo.model_validate(data))

    @host_app.command("earnings")
    def host_earnings(
        by: str = typer.Option("lease", "--by", help="lease or day."),
        host_id: str = typer.Option(None, "--host", help="Only this host."),
        as_json: bool = JSON,
    ) -> None:
        """What your hosts earned: charged to renters, platform fee withheld, your share."""
        client = _client()
        host_id = resolve_id(client, host_id, "ho") if host_id else host_id
        path = "/v1/earnings?" + urlencode({"by": by, **({"host_id": host_id} if host_id else {})})
        rep = EarningsReport.model_validate(client.get(path))
        if as_json:
            print_json(rep.model_dump())
            return
        table(
            f"Earnings by {rep.by}",
            [rep.by, "host", "device, tier", "time", "charged", "fee", "earned"],
            [
                (
                    x.key,
                    x.host_id,
                    " ".join(v for v in (x.device_type, x.tier) if v),
                    fmt_ms(x.ms),
                    fmt_usd(x.charged_micros),
                    fmt_usd(x.fee_micros),
                    fmt_usd(x.earned_micros),
                )
                for x in rep.lines
            ],
            ids=(rep.by, "host"),
        )
        console.print(
            f"Charged {fmt_usd(rep.charged_micros)}, fees {fmt_usd(rep.fee_micros)}, "
            f"earned [bold]{fmt_usd(rep.earned_micros)}[/]; "
            f"{fmt_kwh(rep.energy_mwh)}, {fmt_co2(rep.carbon_mg)}"
        )

    market_app = typer.Typer(
        help="The book per GPU model, quotes, and hosts' offers.", invoke_without_command=True
    )
    app.add_typer(market_app, name="market")

    @market_app.callback()
    def market(
        ctx: typer.Context,
        gpu: str = typer.Option(None, "--gpu", help="Only this GPU model."),
        as_json: bool = JSON,
    ) -> None:
        """The book: asks, interruptible minimums, standing bids, recent clearing prices."""
        if ctx.invoked_subcommand:
            return
        path = "/v1/market/book" + (f"?gpu={gpu}" if gpu else "")
        books = [BookInfo.model_validate(b) for b in _client().get(path)]
        if as_json:
            print_json([b.model_dump() for b in books])
            return
        if not books:
            console.print("The market is empty: no host with GPUs is registered.")
        for b in books:
            leased = ", ".join(f"{k} {v}" for k, v in b.leased.items() if v) or "none"
            console.print(
                f"[bold]{shown(b.device_type)}[/]: {b.free_devices} free of {b.listed_devices} "
                f"listed; leased: {leased}"
            )
            depth = max(len(b.asks), len(b.interruptible_minimums), len(b.standing_bids), 1)

            def level(levels: list[Any], i: int) -> str:
                if i >= len(levels):
                    return ""
                return f"{fmt_usd(levels[i].price_micros)} x{levels[i].devices}"

            table(
                f"{b.device_type} book ($/GPU-hour x devices)",
                ["ask (on-demand)", "interruptible min", "standing bid"],
                [
                    (
                        level(b.asks, i),
                        level(b.interruptible_minimums, i),
                        level(b.standing_bids, i),
                    )
                    for i in range(depth)
                ],
            )
            if b.recent:
                recent = ", ".join(
                    f"{fmt_usd(c.price_micros)} ({c.tier}, x{c.devices})" for c in b.recent[:5]
                )
                console.print(f"recent clearing prices: {recent}")

    @market_app.command("quote")
    def market_quote(
        gpu: str = typer.Argument(..., help="e.g. H100, 4xH100."),
        tier: str = typer.Option("on-demand", help="on-demand, interruptible or reserved."),
        bid: float = typer.Option(None, help="interruptible: your bid, $/GPU-hour."),
        max_price: float = typer.Option(None, "--max-price", help="$/GPU-hour at most."),
        nodes: int = typer.Option(1, help="Nodes (hosts) of this size, all or nothing."),
        region: str = REGION,
        min_reliability: float = MIN_RELIABILITY,
        prefer: str = PREFER,
        max_carbon: int = MAX_CARBON,
        verified: bool = VERIFIED,
        as_json: bool = JSON,
    ) -> None:
        """What a request would cost now (nothing is leased)."""
        check_market_options(min_reliability, max_carbon)
        body = {
            "gpu": gpu,
            "nodes": nodes,
            "tier": _tier(tier),
            "bid_micros": _micros(bid, "--bid"),
            "max_price_micros": _micros(max_price, "--max-price"),
            "region": region,
            "min_reliability_ppm": round(min_reliability * 1_000_000),
            "prefer": prefer,
            "max_carbon_g_per_kwh": max_carbon,
            "verified": verified,
        }
        client = _client()
        q = QuoteInfo.model_validate(
            client.post("/v1/market/quote", {k: v for k, v in body.items() if v is not None})
        )
        if as_json:
            print_json(q.model_dump())
            return
        asked = tier.replace("_", "-")
        if q.available and q.reservations:
            ends = {r["id"]: r["end_ms"] for r in client.get("/v1/reservations")}
            covered = ", ".join(
                f"{r} (until {fmt_time(ends[r])} UTC)" if r in ends else r for r in q.reservations
            )
            console.print(
                f"{shown(gpu)} {asked}: covered by your reservation {covered}, paid when "
                f"reserved: {fmt_usd(q.rate_micros_per_hour)}/hour more"
            )
            if q.without_reservations is not None:
                console.print(f"without it: {_quote_line(q.without_reservations)}")
            return
        console.print(_quote_line(q, asked=f"{shown(gpu)} "))

    @market_app.command("hosts")
    def market_hosts(as_json: bool = JSON) -> None:
        """Every host's offers, reliability, energy source and carbon intensity."""
        items = [HostMarketInfo.model_validate(h) for h in _client().get("/v1/market/hosts")]
        if as_json:
            print_json([h.model_dump() for h in items])
            return
        for h in items:
            _print_host(h)

    @app.command()
    def reserve(
        gpu: str = typer.Argument(..., help="Devices per node, e.g. 8xH100."),
        start: str = typer.Option("now", help="'now' or an ISO time (UTC unless stated)."),
        hours: float = typer.Option(..., help="Length of the window."),
        nodes: int = typer.Option(1, help="Nodes (one block per host)."),
        max_price: float = typer.Option(None, "--max-price", help="$/GPU-hour at most."),
        region: str = REGION,
        min_reliability: float = MIN_RELIABILITY,
        prefer: str = PREFER,
        verified: bool = VERIFIED,
        as_json: bool = JSON,
    ) -> None:
        """Reserve a block at the reserved price, paid now for the whole window."""
        check_market_options(min_reliability, None)
        body = {
            "gpu": gpu,
            "nodes": nodes,
            "start_ms": _start_ms(start),
            "hours": hours,
            "max_price_micros": _micros(max_price, "--max-price"),
            "region": region,
            "min_reliability_ppm": round(min_reliability * 1_000_000),
            "prefer": prefer,
            "verified": verified,
        }
        r = ReservationInfo.model_validate(
            _client().post("/v1/reservations", {k: v for k, v in body.items() if v is not None})
        )
        if as_json:
            print_json(r.model_dump())
            return
        console.print(
            f"reserved {r.id}: {_block(r)} on {shown(', '.join(r.hosts))} from "
            f"{fmt_time(r.start_ms)} to {fmt_time(r.end_ms)} UTC at {fmt_usd(r.price_micros)}"
            f"/GPU-hour; charged {fmt_usd(r.cost_micros)}"
        )

    @app.command()
    def reservations(as_json: bool = JSON) -> None:
        """Your reservations whose window has not ended."""
        items = [ReservationInfo.model_validate(r) for r in _client().get("/v1/reservations")]
        if as_json:
            print_json([r.model_dump() for r in items])
            return
        table(
            "Reservations",
            ["id", "devices", "hosts", "start (UTC)", "end (UTC)", "$/GPU hour", "cost"],
            [
                (
                    r.id,
                    _block(r),
                    ", ".join(r.hosts),
                    fmt_time(r.start_ms),
                    fmt_time(r.end_ms),
                    fmt_usd(r.price_micros),
                    fmt_usd(r.cost_micros),
                )
                for r in items
            ],
            ids=("id", "hosts"),
        )

    credits_app = typer.Typer(
        help="Prepaid credits: balance, grants (operator), daily cap.",
        invoke_without_command=True,
    )
    app.add_typer(credits_app, name="credits")

    def _show(c: CreditInfo, as_json: bool) -> None:
        if as_json:
            print_json(c.model_dump())
            return
        cap = "none" if c.daily_cap_micros is None else fmt_usd(c.daily_cap_micros)
        console.print(
            f"{c.account_id}: balance [bold]{fmt_usd(c.balance_micros)}[/], spent today "
            f"{fmt_usd(c.spent_today_micros)}, daily cap {cap}"
        )
        if not c.ok and c.required:
            console.print(f"[red]{shown(c.reason)}[/]")
        elif not c.ok:
            console.print(
                "this exchange does not require credits (CRUCIBLE_REQUIRE_CREDITS is off): "
                "work still runs, and the balance may go below zero",
                markup=False,
            )

    @credits_app.callback()
    def credits(
        ctx: typer.Context,
        account: str = typer.Option(None, help="Admin: another account."),
        as_json: bool = JSON,
    ) -> None:
        """Your balance and today's spend."""
        if ctx.invoked_subcommand:
            return
        path = "/v1/credits" + (f"?account={account}" if account else "")
        _show(CreditInfo.model_validate(_client().get(path)), as_json)

    @credits_app.command("grant", context_settings=NUMBERS)
    def credits_grant(
        account: str = typer.Argument(..., help="The account's name or id."),
        amount: float = typer.Argument(..., help="Dollars."),
        key: str = typer.Option("", help="Idempotency key: the same key grants once."),
        memo: str = typer.Option("", help="Why (shown in statements)."),
        as_json: bool = JSON,
    ) -> None:
        """Grant prepaid credits to an account (operator: admin token)."""
        if not 0 < amount <= 1e9:
            raise InvalidRequestError(
                "amount must be dollars in (0, 1e9]: a grant adds credit, it cannot take any"
            )
        body = {"account": account, "amount_micros": round(amount * 1e6), "key": key, "memo": memo}
        _show(CreditInfo.model_validate(_client().post("/v1/credits/grants", body)), as_json)

    @credits_app.command("cap", context_settings=NUMBERS)
    def credits_cap(
        account: str = typer.Argument(..., help="The account's name or id."),
        dollars: str = typer.Argument(..., help="Daily cap in dollars, or 'none'."),
        as_json: bool = JSON,
    ) -> None:
        """Set an account's spend cap per UTC day ('none' removes it)."""
        cap = None
        if dollars != "none":
            try:
                value = float(dollars)
            except ValueError:
                raise InvalidRequestError(f"the cap {dollars!r} is not dollars or 'none'") from None
            if not 0 <= value <= 1e9:
                raise InvalidRequestError(
                    "the daily cap must be dollars in [0, 1e9] (0 stops all spending), or "
                    "'none' for no cap"
                )
            cap = round(value * 1_000_000)
        body = {"account": account, "cap_micros": cap}
        data = _client().transport.request("PUT", "/v1/credits/cap", body)
        _show(CreditInfo.model_validate(data), as_json)

    @app.command()
    def statement(
        kind: str = typer.Option("entries", help="entries, apps or calls."),
        app_id: str = typer.Option(
            None, "--app", help="Only this app (an app id, short id or name; a pod's as pod:NAME)."
        ),
        as_csv: bool = typer.Option(False, "--csv", help="CSV on standard output."),
        since: str = SINCE,
        until: str = UNTIL,
    ) -> None:
        """Your statement: ledger entries, charges per app, or cost per call (carried across
        retries and preemptions); --since/--until keep a period (entries by when they were
        posted, calls by when they were submitted)."""
        query: dict[str, str | int] = {"kind": kind, **period_query(since, until)}
        client = _client()
        if app_id:
            query["app_id"] = resolve_app(client, app_id)
        path = f"/v1/statement?{urlencode(query)}"
        if as_csv:
            status, data = client.transport.request_raw("GET", path + "&format=csv")
            if status >= 300:
                client.transport._decode(status, data)  # raises the server's error
            text = data.decode("utf-8", "replace")
            # To a terminal, others' words (a grant's memo) must not act on it; to a file or a
            # pipe, the data as it is.
            sys.stdout.write(clean(text, lines=True) if sys.stdout.isatty() else text)
            return
        lines = client.get(path)
        if not lines:
            console.print("nothing yet")
            return
        view = _STATEMENT_VIEWS.get(kind)
        if view is None:  # a kind this CLI does not know: every field as it is
            cols = list(lines[0])
            rows = [[line[c] for c in cols] for line in lines]
        else:
            cols = [header for header, _ in view]
            rows = [[cell(line) for _, cell in view] for line in lines]
        table(f"Statement ({kind}; `--csv` for every field)", cols, rows, ids=_ID_HEADERS)
