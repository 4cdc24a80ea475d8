"""Destructive commands (`volume delete`, `dict clear`, `host remove`, ...) ask before they
act: on a terminal they ask yes/no; with ``--yes`` they do not ask; with no terminal to ask
(a script, a pipe, CI) they refuse, naming ``--yes``, rather than act unasked."""

from __future__ import annotations

import sys

import typer

from crucible.errors import InvalidRequestError

__all__ = ["YES", "confirm"]

YES = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")


def confirm(question: str, yes: bool) -> None:
    """Go on when ``yes``, or when the user answers yes to ``question`` (e.g. "Delete volume
    'data' and all its versions?"); exit 1 otherwise."""
    if yes:
        return
    if sys.stdin is None or not sys.stdin.isatty():
        raise InvalidRequestError(
            f"{question} Nothing was done: there is no terminal to ask on; pass --yes to "
            "confirm (e.g. in a script)"
        )
    if not typer.confirm(question, default=False):
        typer.echo("Nothing was done.", err=True)
        raise typer.Exit(1)
