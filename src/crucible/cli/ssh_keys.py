"""`crucible ssh-key add|list|rm`: the public keys your containers' SSH servers accept."""

from __future__ import annotations

from pathlib import Path

import typer

from crucible.cli._output import clean, console, fmt_time, print_json, table
from crucible.cli.resources import JSON, _client
from crucible.errors import InvalidRequestError
from crucible.protocol.access import SshKeyInfo
from crucible.protocol.transport import url_part
from crucible.sdk._local_files import read_text_file

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    key_app = typer.Typer(
        help="SSH public keys for `crucible container ssh`.", no_args_is_help=True
    )
    app.add_typer(key_app, name="ssh-key")

    @key_app.command("add")
    def add(
        key: str = typer.Argument(
            ..., help="A public key file (e.g. ~/.ssh/id_ed25519.pub) or the key line itself."
        ),
        name: str = typer.Option("", "--name", help="A name (default: the key's comment)."),
        as_json: bool = JSON,
    ) -> None:
        """Register a public key for your account."""
        path = Path(key).expanduser()
        if key.startswith(("ssh-", "ecdsa-", "sk-")):
            line = key
        elif path.exists():
            line = read_text_file(path, "the key file", 1 << 20)
        else:
            raise InvalidRequestError(
                f"{key!r} is neither a file nor a public key line: give the .pub file "
                "(ssh-keygen -t ed25519 makes ~/.ssh/id_ed25519.pub)"
            )
        info = SshKeyInfo.model_validate(
            _client().post("/v1/ssh-keys", {"public_key": line.strip(), "name": name})
        )
        if as_json:
            print_json(info.model_dump())
        else:
            console.print(
                f"added {info.type} key {info.fingerprint} ({clean(info.name)})", markup=False
            )

    @key_app.command("list")
    def list_(as_json: bool = JSON) -> None:
        """Your account's SSH keys."""
        keys = [SshKeyInfo.model_validate(k) for k in _client().get("/v1/ssh-keys")]
        if as_json:
            print_json([k.model_dump() for k in keys])
            return
        if not keys:
            console.print("no SSH keys: crucible ssh-key add ~/.ssh/id_ed25519.pub", markup=False)
            return
        table(
            "SSH keys",
            ["id", "name", "type", "fingerprint", "added"],
            [[k.id, k.name, k.type, k.fingerprint, fmt_time(k.created_ms)] for k in keys],
            ids=["id"],
        )

    @key_app.command("rm")
    def rm(key: str = typer.Argument(..., help="The key's id, fingerprint or name.")) -> None:
        """Remove a key: containers stop accepting it at the next SSH login."""

        _client().transport.delete(f"/v1/ssh-keys/{url_part(key)}")
        console.print(f"removed SSH key {key}", markup=False)

    key_app.command("delete", hidden=True)(rm)
