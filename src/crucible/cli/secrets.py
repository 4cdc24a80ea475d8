"""`crucible secret create|list|delete|rotate`: names and keys are shown, values never."""

from __future__ import annotations

from pathlib import Path

import typer

from crucible.cli._output import clean, console, fmt_time, print_json, table
from crucible.cli.resources import JSON, _client
from crucible.errors import InvalidRequestError
from crucible.protocol.secrets import SecretInfo
from crucible.protocol.transport import url_part
from crucible.sdk._secrets import parse_dotenv

__all__ = ["register"]


def _pairs(pairs: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidRequestError(f"{pair.split('=')[0]!r}: give KEY=VALUE pairs")
        values[key] = value
    return values


def register(app: typer.Typer) -> None:
    secret_app = typer.Typer(help="Secrets: key/values injected into your containers.")
    app.add_typer(secret_app, name="secret")

    @secret_app.command("create")
    def create(
        name: str,
        pairs: list[str] = typer.Argument(None, help="KEY=VALUE pairs."),
        from_dotenv: Path = typer.Option(None, "--from-dotenv", help="Read KEY=VALUE lines."),
        force: bool = typer.Option(False, "--force", help="Replace an existing secret's values."),
        as_json: bool = JSON,
    ) -> None:
        """Create a secret (or replace its values with --force). Values given on the command
        line land in your shell history: prefer --from-dotenv for real credentials."""
        values = parse_dotenv(from_dotenv) if from_dotenv else {}
        values.update(_pairs(pairs or []))
        if not values:
            raise InvalidRequestError("give KEY=VALUE pairs or --from-dotenv FILE")
        body = {"name": name, "values": values, "overwrite": force}
        info = SecretInfo.model_validate(_client().post("/v1/secrets", body))
        if as_json:
            print_json(info.model_dump())
        else:
            console.print(f"secret {info.name}: {', '.join(info.keys)}", markup=False)

    @secret_app.command("list")
    def list_(as_json: bool = JSON) -> None:
        """Your secrets: names and keys (never values)."""
        items = [SecretInfo.model_validate(s) for s in _client().get("/v1/secrets")]
        if as_json:
            print_json([s.model_dump() for s in items])
            return
        table(
            "Secrets",
            ["name", "keys", "updated (UTC)"],
            [(s.name, ", ".join(s.keys), fmt_time(s.updated_ms)) for s in items],
        )

    @secret_app.command("delete")
    def delete(name: str) -> None:
        """Delete a secret. Functions that name it start without it (the running apps'
        functions that do are named)."""
        client = _client()
        used_by = SecretInfo.model_validate(client.get(f"/v1/secrets/{url_part(name)}"))
        client.transport.request("DELETE", f"/v1/secrets/{url_part(name)}")
        console.print(f"deleted secret {name}", markup=False)
        if used_by.used_by:
            typer.echo(
                f"warning: {', '.join(clean(u) for u in used_by.used_by)} name(s) it: their new "
                f"containers start without it (create it again with `crucible secret create "
                f"{clean(name)} KEY=VALUE ...`)",
                err=True,
            )

    secret_app.command("rm", hidden=True)(delete)

    @secret_app.command("rotate")
    def rotate(as_json: bool = JSON) -> None:
        """Re-encrypt every secret with the first key of CRUCIBLE_SECRETS_KEYS (admin)."""
        data = _client().post("/v1/secrets/rotate")
        if as_json:
            print_json(data)
        else:
            console.print(f"re-encrypted {data['resealed']} secret(s) with key {data['key_id']}")
