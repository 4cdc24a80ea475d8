"""`crucible dict|queue list|clear|delete`: the account's shared dicts and queues."""

from __future__ import annotations

import typer
from pydantic import ValidationError

from crucible.cli._confirm import YES, confirm
from crucible.cli._output import clean, console, fmt_time, print_json, table
from crucible.cli.resources import JSON, _client
from crucible.errors import InvalidRequestError
from crucible.protocol.common import Named
from crucible.protocol.coordination import DictInfo, QueueInfo
from crucible.protocol.transport import url_part

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    dict_app = typer.Typer(help="crucible.Dict objects of your account.")
    queue_app = typer.Typer(help="crucible.Queue objects of your account.")
    app.add_typer(dict_app, name="dict")
    app.add_typer(queue_app, name="queue")

    @dict_app.command("list")
    def dict_list(as_json: bool = JSON) -> None:
        """Your dicts: entries, size and when each was last used."""
        items = [DictInfo.model_validate(d) for d in _client().get("/v1/dicts")]
        if as_json:
            print_json([d.model_dump() for d in items])
            return
        table(
            "Dicts",
            ["name", "entries", "bytes", "last used (UTC)"],
            [(d.name, d.entries, d.bytes, fmt_time(d.last_used_ms)) for d in items],
        )

    @dict_app.command("clear")
    def dict_clear(name: str, yes: bool = YES) -> None:
        """Remove every entry of a dict (it stays, empty; asks first, --yes does not)."""
        path = _path("dict", name)
        confirm(f"Remove every entry of dict '{clean(name)}'?", yes)
        _client().transport.request("POST", f"/v1/dicts/{path}/clear")
        console.print(f"cleared dict {name}", markup=False)

    @dict_app.command("delete")
    def dict_delete(name: str, yes: bool = YES) -> None:
        """Delete a dict and its entries (asks first; --yes does not)."""
        path = _path("dict", name)
        confirm(f"Delete dict '{clean(name)}' and its entries?", yes)
        _client().transport.request("DELETE", f"/v1/dicts/{path}")
        console.print(f"deleted dict {name}", markup=False)

    dict_app.command("rm", hidden=True)(dict_delete)

    @queue_app.command("list")
    def queue_list(as_json: bool = JSON) -> None:
        """Your queues: items per partition and when each was last used."""
        items = [QueueInfo.model_validate(q) for q in _client().get("/v1/queues")]
        if as_json:
            print_json([q.model_dump() for q in items])
            return
        table(
            "Queues",
            ["name", "items", "partitions", "last used (UTC)"],
            [
                (
                    q.name,
                    q.items,
                    ", ".join(f"{p or '(default)'}: {n}" for p, n in sorted(q.partitions.items())),
                    fmt_time(q.last_used_ms),
                )
                for q in items
            ],
        )

    @queue_app.command("clear")
    def queue_clear(
        name: str,
        partition: str = typer.Option("", help="One partition (default: the default one)."),
        all_: bool = typer.Option(False, "--all", help="Every partition."),
        yes: bool = YES,
    ) -> None:
        """Remove the items of a queue's partition (or of all of them with --all; asks
        first, --yes does not)."""
        path = _path("queue", name)
        what = (
            "every partition of"
            if all_
            else f"partition {clean(partition)!r} of"
            if partition
            else "the default partition of"
        )
        confirm(f"Remove the items of {what} queue '{clean(name)}'?", yes)
        _client().post(f"/v1/queues/{path}/clear", {"partition": partition, "all": all_})
        console.print(f"cleared {what} queue {clean(name)}", markup=False)

    @queue_app.command("delete")
    def queue_delete(name: str, yes: bool = YES) -> None:
        """Delete a queue and its items (asks first; --yes does not)."""
        path = _path("queue", name)
        confirm(f"Delete queue '{clean(name)}' and its items?", yes)
        _client().transport.request("DELETE", f"/v1/queues/{path}")
        console.print(f"deleted queue {name}", markup=False)

    queue_app.command("rm", hidden=True)(queue_delete)


def _path(kind: str, name: str) -> str:
    """``name`` as a path segment, once it is a name a dict or queue can have (a '/' in it
    would reach another route, which answers a bare "Not Found")."""
    try:
        Named(name=name)  # the rule every dict and queue name was created under
    except ValidationError:
        raise InvalidRequestError(
            f"{name!r} is not a {kind} name (1-128 letters, digits, '_', '.' or '-'); "
            f"`crucible {kind} list` shows yours"
        ) from None
    return url_part(name)
