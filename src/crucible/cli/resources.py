"""Views: `crucible apps`, `calls`, `call`, `logs`, `hosts`, `bill`; and `crucible token`."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any
from urllib.parse import urlencode

import typer

from crucible.cli._embedded import ensure_running
from crucible.cli._ids import resolve_id, shorten_ids
from crucible.cli._output import (
    clean,
    console,
    err_console,
    fmt_clock,
    fmt_co2,
    fmt_kwh,
    fmt_ms,
    fmt_time,
    fmt_usd,
    print_json,
    shown,
    table,
)
from crucible.cli._when import SINCE, UNTIL, period_query
from crucible.errors import InvalidRequestError, NotFoundError
from crucible.protocol.billing import BillReport
from crucible.protocol.calls import CallAttempt, CallTimeline
from crucible.protocol.hosts import (
    HostInfo,
    IsolationReport,
    isolation_summary,
    verification_summary,
)
from crucible.protocol.logs import LogPage
from crucible.protocol.transport import url_part
from crucible.sdk._checks import NAME_PATTERN, check_int, check_number
from crucible.sdk._client import Client
from crucible.settings import load_settings

__all__ = ["register"]

JSON = typer.Option(False, "--json", help="Print JSON for scripts.")
# What every command taking an app accepts (resolve_app).
APP_REF_HELP = (
    "An app id (ap-..., full or short), an app's name (its most recent app), or a "
    "deployment's name or id (dp-...: its current version)."
)
# Which hosts the market may use, as for functions (docs/market.md).
REGION = typer.Option(None, "--region", help="Only hosts in this region.")
MIN_RELIABILITY = typer.Option(
    0.0, "--min-reliability", help="Only hosts at least this reliable (0..1)."
)
PREFER = typer.Option("cheapest", "--prefer", help="cheapest, greenest or fastest.")
MAX_CARBON = typer.Option(None, "--max-carbon", help="Only hosts at most this gCO2/kWh (0..5000).")


def check_market_options(min_reliability: float, max_carbon: int | None) -> None:
    """The ranges of the market options, checked under the names typed before anything is
    sent (the SDK's and the API's checks name their arguments: ``max_carbon_g_per_kwh``)."""
    check_number("--min-reliability", min_reliability, 0, 1)
    check_int("--max-carbon", max_carbon, 0, 5000, optional=True)


VERIFIED = typer.Option(
    False, "--verified", help="Only hosts whose self-test matched the GPU catalog."
)
_BILL_COLUMNS = (
    "app",
    "app id",
    "function",
    "containers",
    "container time",
    "calls",
    "run time",
    "cost",
)


def _isolation_words(isolated: bool, report: IsolationReport | None) -> str:
    """``full`` (with whether it filters network egress) or what is missing."""
    if not isolated:
        if report is not None and report.full():
            return "full, but runs its owner's code only (the account is not an approved provider)"
        return isolation_summary(report)
    egress = report is not None and report.egress_filter
    return "full, egress " + ("filtered" if egress else "refused to other accounts")


def _client(*, start: str | None = None) -> Client:
    """A client of the configured exchange. ``start``: the command (`crucible deploy ...`),
    which runs work and so starts an embedded exchange when none runs; the others only read
    or change what an exchange holds, and say how to start one."""
    settings = load_settings()
    if start is None:
        config = ensure_running(settings, start=False)
    else:
        config = ensure_running(settings, command=start)
    client = Client(config.server_url, config.token)
    client.transport.on_wait = _say_waiting
    return client


def _say_waiting(message: str) -> None:
    """A server that does not answer is said so while the client waits for it (it was 30 s
    of silence, then the error)."""
    err_console.print(clean(message), markup=False, highlight=False)


def resolve_app(client: Client, ref: str) -> str:
    """The app id for ``ref``: an app id as is; for a name, the most recent app of that name,
    where a running deployment of that name counts as its current version (so a deployment
    whose newest version failed to activate still shows the version that serves)."""
    if ref.startswith("dp-"):  # a deployment's id (`crucible deployments`): its current app
        name = deployment_name(client, ref)
        return str(client.get(f"/v1/deployments/{url_part(name)}")["app_id"])
    if ref.startswith("pod:"):  # a pod's app, as the bill and the statement name it
        return str(client.get(f"/v1/pods/{url_part(ref[4:])}")["app_id"])
    try:
        # A full id as is; a short one (ap-XXXXXXXX) looked up; another kind's id refused.
        resolved = resolve_id(client, ref, "ap")
    except InvalidRequestError as exc:
        if ref.startswith("ca-"):
            raise InvalidRequestError(
                f"{exc}; a call's log lines: `crucible logs APP --call {ref}`"
            ) from None
        raise
    if resolved.startswith("ap-"):
        return resolved
    missing = NotFoundError(
        f"no app or deployment named {ref!r} in this account: `crucible apps` lists your apps "
        "(ids and names, newest first), `crucible deployments` your deployments"
    )
    if not NAME_PATTERN.fullmatch(ref):  # no app can have that name
        raise missing
    named = client.get(f"/v1/apps?name={url_part(ref)}")
    newest_ephemeral = next((a["id"] for a in named if a["ephemeral"]), None)
    deployed: str | None = None
    try:
        deployed = client.get(f"/v1/deployments/{url_part(ref)}")["app_id"]
    except NotFoundError:
        deployed = None
    candidates = [i for i in (newest_ephemeral, deployed) if i]
    if candidates:
        return max(candidates)  # ids sort by creation time
    if named:
        return str(named[0]["id"])
    raise missing


def deployment_name(client: Client, ref: str) -> str:
    """The deployment's name for ``ref``: a deployment id (``dp-...``, full or short, as
    `crucible deployments` prints it) is looked up among the account's deployments; anything
    else is taken as a name."""
    if not ref.startswith("dp-"):
        return ref
    full = resolve_id(client, ref, "dp")
    for d in client.get("/v1/deployments"):
        if d["id"] == full:
            return str(d["name"])
    raise NotFoundError(
        f"no deployment has the id {ref} in this account: `crucible deployments` lists yours"
    )


def _elapsed(a: CallAttempt) -> int | None:
    if a.started_ms is None or a.ended_ms is None:
        return None
    return a.ended_ms - a.started_ms


def _apps_by_carbon(report: BillReport) -> list[dict[str, Any]]:
    """The bill's lines summed per app, most emissions first (then cost, then id)."""
    per: dict[str, dict[str, Any]] = {}
    for line in report.lines:
        a = per.setdefault(
            line.app_id,
            {
                "app_id": line.app_id,
                "app_name": line.app_name,
                "carbon_mg": 0,
                "energy_mwh": 0,
                "cost_micros": 0,
            },
        )
        a["carbon_mg"] += line.carbon_mg
        a["energy_mwh"] += line.energy_mwh
        a["cost_micros"] += line.cost_micros
    return sorted(per.values(), key=lambda a: (-a["carbon_mg"], -a["cost_micros"], a["app_id"]))


def register(app: typer.Typer) -> None:
    apps_app = typer.Typer(help="Apps on the exchange.", invoke_without_command=True)
    app.add_typer(apps_app, name="apps")

    @apps_app.callback()
    def apps(ctx: typer.Context, as_json: bool = JSON) -> None:
        """List your apps."""
        if ctx.invoked_subcommand:
            return
        items = _client().list_apps()
        if as_json:
            print_json([a.model_dump() for a in items])
            return
        table(
            "Apps",
            ["id", "name", "state", "functions", "created (UTC)"],
            [(a.id, a.name, a.state, a.functions, fmt_time(a.created_ms)) for a in items],
            ids=("id",),
        )

    @apps_app.command("stop")
    def apps_stop(
        app: str = typer.Argument(..., help=APP_REF_HELP),
    ) -> None:
        """Stop an app: its queued calls are cancelled and its containers stopped."""
        client = _client()
        info = client.stop_app(resolve_app(client, app))
        console.print(f"{shown(info.name)} ({info.id}) is {info.state}")

    @app.command()
    def calls(
        app_id: str = typer.Option(
            None, "--app", help="Only this app's calls (an app id, short id or name)."
        ),
        state: str = typer.Option(
            None,
            help="Only calls in this state: queued, running, succeeded, failed, cancelled, "
            "timed_out.",
        ),
        limit: int = typer.Option(20, help="How many (newest first)."),
        as_json: bool = JSON,
    ) -> None:
        """List recent calls with their state, run time and cost.

        Example: `crucible calls --app printer --state failed --limit 100`."""
        client = _client()
        app_id = resolve_app(client, app_id) if app_id else app_id
        items = client.list_calls(app_id=app_id, state=state, limit=limit)
        if as_json:
            print_json([c.model_dump() for c in items])
            return
        table(
            "Calls",
            ["id", "state", "attempts", "run time", "cost", "created (UTC)", "error"],
            [
                (
                    c.id,
                    c.state,
                    c.attempts,
                    fmt_ms(c.exec_ms),
                    fmt_usd(c.cost_micros),
                    fmt_time(c.created_ms),
                    (c.error.message[:60] if c.error else ""),
                )
                for c in items
            ],
            ids=("id",),
        )

    @app.command()
    def call(
        call_id: str = typer.Argument(..., help="The call's id or short id (`crucible calls`)."),
        as_json: bool = JSON,
    ) -> None:
        """One call's timeline: every attempt (where it ran, how it ended, what it cost) and
        its phases: queued, scheduled, starting, waiting, running.

        Example: `crucible call ca-8j9k0m1n` (an id `crucible calls` lists)."""
        client = _client()
        call_id = resolve_id(client, call_id, "ca")
        t = CallTimeline.model_validate(client.get(f"/v1/calls/{url_part(call_id)}/timeline"))
        # A queued call: why it waits, when the scheduler knows (CallInfo.waiting); one that
        # ended without a result: why (a call refused before it ran has no attempt to say).
        info = client.get(f"/v1/calls/{url_part(call_id)}") if t.state != "succeeded" else {}
        waiting = info.get("waiting") if t.state == "queued" else None
        error = info.get("error") or None
        if as_json:
            print_json({**t.model_dump(), "waiting": waiting, "error": error})
            return
        preempted = f", {t.preemptions} preempted" if t.preemptions else ""
        console.print(
            f"{t.call_id}: {t.state}, {t.attempts} attempt(s){preempted}; "
            f"cost {fmt_usd(t.cost_micros)}"
        )
        if t.history:  # none yet while the call waits for its first container
            table(
                "Attempts",
                ["#", "outcome", "container", "host", "start", "from (UTC)", "ran", "cost"],
                [
                    (
                        a.attempt,
                        a.outcome + (f" ({a.error.code})" if a.error else ""),
                        a.container_id,
                        a.host_id,
                        "cold" if a.cold_start else "warm",
                        fmt_clock(a.started_ms),
                        fmt_ms(a.exec_ms if a.exec_ms is not None else _elapsed(a)),
                        fmt_usd(a.cost_micros),
                    )
                    for a in t.history
                ],
                ids=("container", "host"),
            )
        if t.energy_mwh is not None:
            console.print(f"energy {fmt_kwh(t.energy_mwh)}, {fmt_co2(t.carbon_mg)}")
        if waiting:
            console.print(f"waiting: {clean(waiting)}", markup=False, highlight=False)
        if isinstance(error, dict):
            reason = f"{error.get('code', 'error')}: {error.get('message', '')}"
            console.print(f"error: {clean(reason)}", markup=False, highlight=False)
        table(
            "Timeline",
            ["#", "phase", "from (UTC)", "took", "cost", "detail"],
            [
                (
                    p.attempt,
                    p.phase,
                    fmt_clock(p.start_ms),
                    fmt_ms(p.ms),
                    "" if p.cost_micros is None else fmt_usd(p.cost_micros),
                    p.detail,
                )
                for p in t.phases
            ],
        )

    @app.command()
    def logs(
        app: str = typer.Argument(..., help=APP_REF_HELP),
        call_id: str = typer.Option(None, "--call", help="Only this call's lines."),
        follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
        as_json: bool = JSON,
    ) -> None:
        """What an app's functions printed (stdout and stderr), oldest first. APP is an app
        id, or a name: the most recent app of that name (an ephemeral `crucible run` or a
        deployment's current version).

        Examples: `crucible logs printer`, `crucible logs printer --call ca-8j9k0m1n`,
        `crucible logs printer -f` (keep printing new lines)."""
        client = _client()
        app_id = resolve_app(client, app)
        if call_id:
            call_id = resolve_id(client, call_id, "ca")  # a short id, as every command takes
        after = 0
        wait_s = 20
        if follow and client.get(f"/v1/apps/{app_id}")["state"] == "stopped":
            wait_s = 3
        printed = False
        while True:
            query = f"after={after}" + (f"&call_id={url_part(call_id)}" if call_id else "")
            page = LogPage.model_validate(
                client.get(
                    f"/v1/apps/{app_id}/logs?{query}" + (f"&wait_s={wait_s}" if follow else "")
                )
            )
            for x in page.lines:
                if as_json:
                    # One JSON object a line, every non-ASCII character escaped (as print_json):
                    # a log line's bidi override or C1 control reaches no terminal raw.
                    typer.echo(json.dumps(x.model_dump(), ensure_ascii=True))
                else:
                    where = x.call_id or x.container_id
                    stream = typer.style(x.stream, fg="red" if x.stream == "stderr" else None)
                    typer.echo(f"{fmt_time(x.ts_ms)} {where} {stream} {clean(x.line)}")
            if page.lines:
                printed = True
            after = page.next_after
            if len(page.lines) >= 1000:
                continue
            if not follow:
                if not printed and not as_json:
                    # Said on stderr: nothing printed left "no output" and "wrong app" alike.
                    what = f"call {call_id}" if call_id else f"app {app_id}"
                    if page.kept_days is not None:
                        # Older than the log window: it may well have printed.
                        typer.echo(
                            f"no log lines kept from {what}: log lines older than "
                            f"{page.kept_days:g} days are pruned (CRUCIBLE_RETENTION_LOGS_DAYS)",
                            err=True,
                        )
                    else:
                        typer.echo(
                            f"no log lines from {what} (its functions printed nothing)", err=True
                        )
                return
            # Following an app that has stopped: its last lines come within moments (its
            # containers send what they still hold); then there is nothing more to follow.
            if wait_s < 20 and not page.lines:
                return
            if wait_s == 20 and client.get(f"/v1/apps/{app_id}")["state"] == "stopped":
                wait_s = 3

    @app.command()
    def hosts(as_json: bool = JSON) -> None:
        """List the exchange's hosts and what they hold."""
        items = [HostInfo.model_validate(h) for h in _client().get("/v1/hosts")]
        if as_json:
            print_json([h.model_dump() for h in items])
            return
        rows = []
        for h in items:
            # 2xH100 (fake), as peers summarise a machine (the GPUs by index: --json).
            kinds = Counter((g.model, g.fake) for g in h.inventory.gpus)
            gpus = ", ".join(
                f"{n}x{model}{' (fake)' if fake else ''}" for (model, fake), n in kinds.items()
            )
            rows.append(
                (
                    h.id,
                    h.name,
                    h.region,
                    h.state,
                    f"{h.allocated_cpu:g}/{h.inventory.cpu_cores:g}",
                    f"{h.allocated_memory_mib}/{h.inventory.memory_mib}",
                    gpus or "-",
                    f"{h.inventory.disk_mib / 1024:.0f} GiB",
                    h.containers,
                )
            )
        table(
            "Hosts",
            [
                "id",
                "name",
                "region",
                "state",
                "cpu used",
                "MiB used",
                "GPUs",
                "disk free",
                "containers",
            ],
            rows,
            ids=("id",),
        )
        # Isolation and verification, a line each per host (what runs there, and whether its
        # self-test matched the catalog; words the agent and the server chose: made inert).
        for h in items:
            detail = (
                f"{shorten_ids(h.id)}: isolation "
                f"{_isolation_words(h.isolated, h.isolation)}; verified "
                f"{verification_summary(h.verified, h.verification)}; gCO2/kWh "
                # The intensity in force and where it came from (declared, a grid source):
                # on this line, where it does not squeeze the table out of 80 columns.
                + ("undeclared" if h.carbon_g_per_kwh is None else f"{h.carbon_g_per_kwh}")
                + (f" ({h.carbon_source})" if h.carbon_g_per_kwh is not None else "")
            )
            console.print(clean(detail), markup=False, highlight=False)
        for h in items:
            if h.carbon_note:
                console.print(f"{h.id}: {clean(h.carbon_note)}", markup=False, highlight=False)
            if h.energy_readings_dropped:
                console.print(
                    f"{h.id}: {h.energy_readings_dropped} absurd power reading(s) dropped"
                )

    @app.command()
    def bill(
        app_id: str = typer.Option(
            None, "--app", help="Only this app (an app id, short id or name; a pod's as pod:NAME)."
        ),
        by: str = typer.Option(
            "function", "--by", help="function (the default), or carbon: apps by emissions."
        ),
        as_json: bool = JSON,
        since: str = SINCE,
        until: str = UNTIL,
    ) -> None:
        """What your apps cost: container time metered to the millisecond, with the energy it
        drew and the CO2 it emitted (* marks estimates where the host could not measure);
        --since/--until keep a period (model tokens count by whole UTC days)."""
        if by not in ("function", "carbon"):
            raise typer.BadParameter(f"--by is 'function' or 'carbon', not {by!r}")
        query: dict[str, str | int] = dict(period_query(since, until))
        client = _client()
        if app_id:
            query["app_id"] = resolve_app(client, app_id)
        path = "/v1/bill" + (f"?{urlencode(query)}" if query else "")
        report = BillReport.model_validate(client.get(path))
        if by == "carbon":
            _bill_by_carbon(report, as_json)
            return
        if as_json:
            print_json(report.model_dump())
            return
        table(
            "Bill",
            _BILL_COLUMNS,
            [
                (
                    line.app_name,
                    line.app_id,
                    line.function_name,
                    line.containers,
                    fmt_ms(line.container_ms),
                    line.calls,
                    fmt_ms(line.exec_ms),
                    fmt_usd(line.cost_micros),
                )
                for line in report.lines
            ],
            ids=("app id",),
        )
        # Energy and emissions in a table of their own: the bill's columns already fill 80.
        table(
            "Energy and emissions (* estimated)",
            ["app", "app id", "function", "kWh", "gCO2"],
            [
                (
                    line.app_name,
                    line.app_id,
                    line.function_name,
                    fmt_kwh(line.energy_mwh, unit=False) + ("*" if line.energy_estimated else ""),
                    fmt_co2(line.carbon_mg, unit=False),
                )
                for line in report.lines
            ],
            ids=("app id",),
        )
        if report.tokens:
            # Model requests billed per token (crucible model usage NAME has the detail).
            table(
                "Model tokens",
                ["model", "requests", "input", "output", "spent", "earned (before fee)"],
                [
                    (
                        t.model,
                        t.requests,
                        t.input_tokens,
                        t.output_tokens,
                        fmt_usd(t.cost_micros),
                        fmt_usd(t.earned_micros),
                    )
                    for t in report.tokens
                ],
            )
        total = f"Total: [bold]{fmt_usd(report.total_micros)}[/]"
        # total_micros is container time; tokens spent and reservations bought are added here.
        parts = [(report.total_micros, "container time")]
        if report.tokens:
            parts.append((sum(t.cost_micros for t in report.tokens), "model tokens"))
        if report.reservations_micros:
            parts.append((report.reservations_micros, "reservations, paid up front"))
        if len(parts) > 1:
            total = (
                f"Total: [bold]{fmt_usd(sum(m for m, _ in parts))}[/] ("
                + " + ".join(f"{fmt_usd(m)} {what}" for m, what in parts)
                + ")"
            )
        console.print(
            f"{total}, {fmt_kwh(report.total_energy_mwh)}, {fmt_co2(report.total_carbon_mg)}"
        )
        if report.since_ms is not None or report.until_ms is not None:
            start = "the start" if report.since_ms is None else fmt_time(report.since_ms)
            end = "now" if report.until_ms is None else fmt_time(report.until_ms)
            console.print(f"Period: {start} to {end} UTC")
        if report.kept_from_ms is not None:
            console.print(
                f"Container time before {fmt_time(report.kept_from_ms)} UTC is not counted: "
                "metered intervals are kept CRUCIBLE_RETENTION_METER_DAYS days; `crucible "
                "statement` has every charge",
                markup=False,
                highlight=False,
            )

    def _bill_by_carbon(report: BillReport, as_json: bool) -> None:
        ranked = _apps_by_carbon(report)
        if as_json:
            print_json(ranked)
            return
        table(
            "Apps by emissions",
            ["app", "app id", "gCO2", "kWh", "cost", "gCO2 per $"],
            [
                (
                    a["app_name"],
                    a["app_id"],
                    fmt_co2(a["carbon_mg"], unit=False),
                    fmt_kwh(a["energy_mwh"], unit=False),
                    fmt_usd(a["cost_micros"]),
                    "-" if not a["cost_micros"] else f"{a['carbon_mg'] / a['cost_micros']:.3f}",
                )
                for a in ranked
            ],
            ids=("app id",),
        )

    token_app = typer.Typer(help="API tokens.")
    app.add_typer(token_app, name="token")

    @token_app.command("create")
    def token_create(
        scope: str = typer.Option("user", help="user, host or admin."),
        name: str = typer.Option("", help="A label."),
        account: str = typer.Option(
            None, help="Admin: the account to create it for (its id or name)."
        ),
        as_json: bool = JSON,
    ) -> None:
        """Create a token; the secret is shown once (the exchange keeps only its hash)."""
        body = {"scope": scope, "name": name, "account_id": account}
        data = _client().post("/v1/tokens", {k: v for k, v in body.items() if v is not None})
        if as_json:
            print_json(data)
        else:
            console.print(f"{data['id']} ({data['scope']}): {shown(data['token'])}")
            err_console.print(
                "Save the secret now: it is shown only once (the exchange keeps only its hash).",
                markup=False,
            )

    @token_app.command("list")
    def token_list(as_json: bool = JSON) -> None:
        """List your account's tokens (never their secrets)."""
        data = _client().get("/v1/tokens")
        if as_json:
            print_json(data)
            return
        table(
            "Tokens",
            ["id", "scope", "name", "created (UTC)", "revoked"],
            [
                (
                    t["id"],
                    t["scope"],
                    t["name"],
                    fmt_time(t["created_ms"]),
                    "yes" if t["revoked"] else "no",
                )
                for t in data
            ],
            ids=("id",),
        )

    @token_app.command("revoke")
    def token_revoke(
        token_id: str = typer.Argument(..., metavar="TOKEN", help="Its id, or its name."),
        force: bool = typer.Option(
            False, "--force", help="Even the token in use, or the last admin token."
        ),
    ) -> None:
        """Revoke a token (it stops working within seconds). The token this command uses,
        and the exchange's last admin token, are refused without --force: revoking either
        locks you (or every operator) out."""
        client = _client()
        token_id = _token_id(client, token_id)
        query = "?force=true" if force else ""
        client.transport.request("DELETE", f"/v1/tokens/{url_part(token_id)}{query}")
        console.print(f"revoked {token_id}")

    account_app = typer.Typer(help="Accounts (admin).")
    app.add_typer(account_app, name="account")

    @account_app.command("create")
    def account_create(name: str, as_json: bool = JSON) -> None:
        """Create a tenant account (admin token needed)."""
        data = _client().post("/v1/accounts", {"name": name})
        if as_json:
            print_json(data)
        else:
            console.print(f"created account {shown(data['name'])} ({data['id']})")

    @account_app.command("provider")
    def account_provider(
        name: str = typer.Argument(help="the account, by name or id (ac-...)"),
        off: bool = typer.Option(
            False, "--off", help="take the approval back: its hosts run its own work only"
        ),
        as_json: bool = JSON,
    ) -> None:
        """Approve an account as a provider (admin): its fully isolated hosts then run other
        accounts' work, whose code, inputs and secrets they see. Without the approval an
        account's hosts run its own work only."""
        data = _client().transport.request(
            "PATCH", f"/v1/accounts/{url_part(name)}", {"provider": not off}
        )
        if as_json:
            print_json(data)
        elif data["provider"]:
            console.print(
                f"{shown(data['name'])} is a provider: its fully isolated hosts run other "
                "accounts' work"
            )
        else:
            console.print(
                f"{shown(data['name'])} is not a provider: its hosts run its own work only "
                "(other accounts' containers there are being stopped)"
            )


def _token_id(client: Client, ref: str) -> str:
    """A token's id from its id, short id or name (`crucible token list` shows both)."""
    ref = resolve_id(client, ref, "tk")  # a name as is; another kind's id refused
    if ref.startswith("tk-"):
        return ref
    named = [t for t in client.get("/v1/tokens") if t["name"] == ref and not t["revoked"]]
    if len(named) > 1:
        raise InvalidRequestError(
            f"{len(named)} tokens are named {clean(ref)!r}: give the id (`crucible token list`)"
        )
    if not named:
        raise NotFoundError(f"no token {clean(ref)!r} (`crucible token list` shows yours)")
    return str(named[0]["id"])
