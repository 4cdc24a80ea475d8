"""`crucible audit`: the exchange's log of privileged actions (an admin token)."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import typer

from crucible.cli._output import fmt_time, print_json, table
from crucible.cli.resources import JSON, _client
from crucible.protocol.audit import AuditPage

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command()
    def audit(
        action: str = typer.Option(None, help="Only this action, e.g. credits.grant."),
        account: str = typer.Option(None, help="Only actions on or by this account (id or name)."),
        target: str = typer.Option(None, help="Only actions on this id (token, host ...)."),
        limit: int = typer.Option(50, help="Entries per page (1..1000)."),
        before: int = typer.Option(None, help="Entries older than this entry id (paging)."),
        as_json: bool = JSON,
    ) -> None:
        """Privileged actions, newest first: tokens, accounts, credits, prices, drains,
        verification results (needs an admin token)."""
        query = {
            k: v
            for k, v in {
                "action": action,
                "account": account,
                "target": target,
                "limit": limit,
                "before": before,
            }.items()
            if v is not None
        }
        page = AuditPage.model_validate(_client().get("/v1/audit?" + urlencode(query)))
        if as_json:
            print_json(page.model_dump())
            return
        table(
            "Audit log",
            ["id", "time (UTC)", "action", "target", "account", "by", "detail"],
            [
                (
                    e.id,
                    fmt_time(e.ts_ms),
                    e.action,
                    e.target,
                    e.account_id or "-",
                    e.actor_account_id or "server",
                    # Values others chose (names, memos): table() shows cells as plain text,
                    # and a value that could read as more fields (a token named "ci,
                    # scope=admin") is quoted.
                    ", ".join(f"{k}={_value(v)}" for k, v in sorted(e.detail.items())),
                )
                for e in page.entries
            ],
        )
        if page.next_before is not None:
            typer.echo(f"older entries: crucible audit --before {page.next_before}")


def _value(v: object) -> str:
    """A detail's value as ``key=value`` shows it: JSON-quoted when it holds a separator, a
    quote or a space (so that no tenant-chosen value reads as fields of its own)."""
    text = str(v)
    if not text or any(c in text for c in ',="\\ '):
        return json.dumps(text)
    return text
