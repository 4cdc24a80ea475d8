"""Views: `crucible apps`, `calls`, `call`, `logs`, `hosts`, `bill`; and `crucible token`."""

from __future__ import annotations

import orjson
import typer
from rich.markup import escape

from crucible.cli._embedded import ensure_running
from crucible.cli._output import console, fmt_ms, fmt_time, fmt_usd, print_json, table
from crucible.protocol.billing import BillReport
from crucible.protocol.calls import CallTimeline
from crucible.protocol.hosts import HostInfo, isolation_summary, verification_summary
from crucible.protocol.logs import LogPage
from crucible.sdk._client import Client
from crucible.settings import load_settings

__all__ = ["register"]

JSON = typer.Option(False, "--json", help="Print JSON for scripts.")


def _client() -> Client:
    config = ensure_running(load_settings())
    return Client(config.server_url, config.token)


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
        )

    @apps_app.command("stop")
    def apps_stop(app_id: str) -> None:
        """Stop an app: its queued calls are cancelled and its containers stopped."""
        info = _client().stop_app(app_id)
        console.print(f"{info.name} ({info.id}) is {info.state}")

    @app.command()
    def calls(
        app_id: str = typer.Option(None, "--app", help="Only this app's calls."),
        state: str = typer.Option(None, help="Only calls in this state."),
        limit: int = typer.Option(20, help="How many (newest first)."),
        as_json: bool = JSON,
    ) -> None:
        """List recent calls with their state, run time and cost."""
        items = _client().list_calls(app_id=app_id, state=state, limit=limit)
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
        )

    @app.command()
    def call(call_id: str, as_json: bool = JSON) -> None:
        """One call's timeline: queued, scheduled, starting, running; what each phase cost."""
        t = CallTimeline.model_validate(_client().get(f"/v1/calls/{call_id}/timeline"))
        if as_json:
            print_json(t.model_dump())
            return
        where = f" on {t.container_id} ({t.host_id})" if t.container_id else ""
        console.print(
            f"{t.call_id}: {t.state}, {t.attempts} attempt(s), {t.preemptions} preemption(s)"
            f"{where}; {'cold' if t.cold_start else 'warm'} start; cost {fmt_usd(t.cost_micros)}"
        )
        table(
            "Timeline",
            ["phase", "from (UTC)", "took", "container cost", "detail"],
            [
                (
                    p.phase,
                    fmt_time(p.start_ms),
                    fmt_ms(p.ms),
                    "" if p.cost_micros is None else fmt_usd(p.cost_micros),
                    p.detail,
                )
                for p in t.phases
            ],
        )

    @app.command()
    def logs(
        app: str = typer.Argument(..., help="An app id, or a deployment's name."),
        call_id: str = typer.Option(None, "--call", help="Only this call's lines."),
        follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
        as_json: bool = JSON,
    ) -> None:
        """What an app's functions printed (stdout and stderr), oldest first."""
        client = _client()
        app_id = app
        if not app.startswith("ap-"):
            app_id = client.get(f"/v1/deployments/{app}")["app_id"] or app
        after = 0
        while True:
            query = f"after={after}" + (f"&call_id={call_id}" if call_id else "")
            page = LogPage.model_validate(
                client.get(f"/v1/apps/{app_id}/logs?{query}" + ("&wait_s=20" if follow else ""))
            )
            for x in page.lines:
                if as_json:
                    typer.echo(orjson.dumps(x.model_dump()).decode())
                else:
                    where = x.call_id or x.container_id
                    stream = typer.style(x.stream, fg="red" if x.stream == "stderr" else None)
                    typer.echo(f"{fmt_time(x.ts_ms)} {where} {stream} {x.line}")
            after = page.next_after
            if not follow and len(page.lines) < 1000:
                return

    @app.command()
    def hosts(as_json: bool = JSON) -> None:
        """List the exchange's hosts and what they hold."""
        items = [HostInfo.model_validate(h) for h in _client().get("/v1/hosts")]
        if as_json:
            print_json([h.model_dump() for h in items])
            return
        rows = []
        for h in items:
            gpus = ", ".join(
                f"{g.index}:{g.model}{' (fake)' if g.fake else ''}" for g in h.inventory.gpus
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
                    h.containers,
                    # Words the agent and the server chose: shown, never read as markup.
                    escape(isolation_summary(h.isolation)),
                    escape(verification_summary(h.verified, h.verification)),
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
                "containers",
                "isolation",
                "verified",
            ],
            rows,
        )

    @app.command()
    def bill(
        app_id: str = typer.Option(None, "--app", help="Only this app."),
        as_json: bool = JSON,
    ) -> None:
        """What your apps cost: container time metered to the millisecond."""
        path = "/v1/bill" + (f"?app_id={app_id}" if app_id else "")
        report = BillReport.model_validate(_client().get(path))
        if as_json:
            print_json(report.model_dump())
            return
        table(
            "Bill",
            ["app", "function", "containers", "container time", "calls", "run time", "cost"],
            [
                (
                    f"{line.app_name} ({line.app_id})",
                    line.function_name,
                    line.containers,
                    fmt_ms(line.container_ms),
                    line.calls,
                    fmt_ms(line.exec_ms),
                    fmt_usd(line.cost_micros),
                )
                for line in report.lines
            ],
        )
        console.print(f"Total: [bold]{fmt_usd(report.total_micros)}[/]")

    token_app = typer.Typer(help="API tokens.")
    app.add_typer(token_app, name="token")

    @token_app.command("create")
    def token_create(
        scope: str = typer.Option("user", help="user, host or admin."),
        name: str = typer.Option("", help="A label."),
        account: str = typer.Option(None, help="Admin: the account to create it for."),
        as_json: bool = JSON,
    ) -> None:
        """Create a token; the secret is printed once."""
        body = {"scope": scope, "name": name, "account_id": account}
        data = _client().post("/v1/tokens", {k: v for k, v in body.items() if v is not None})
        if as_json:
            print_json(data)
        else:
            console.print(f"{data['id']} ({data['scope']}): {data['token']}")

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
                (t["id"], t["scope"], t["name"], fmt_time(t["created_ms"]), t["revoked"])
                for t in data
            ],
        )

    @token_app.command("revoke")
    def token_revoke(token_id: str) -> None:
        """Revoke a token (it stops working within seconds)."""
        _client().transport.request("DELETE", f"/v1/tokens/{token_id}")
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
            console.print(f"created account {data['name']} ({data['id']})")
