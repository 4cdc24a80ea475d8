"""The `crucible` command."""

from __future__ import annotations

import inspect
import os
import sys
import textwrap

import typer

from crucible.cli import (
    audit,
    clusters,
    containers,
    deploy,
    fine_tunes,
    market,
    models,
    objects,
    pods,
    resources,
    run,
    secrets,
    serve,
    sim,
    ssh_keys,
    up,
    volumes,
)
from crucible.cli._embedded import refused_token_advice
from crucible.cli._output import err_console, shown
from crucible.errors import AuthError, Error

__all__ = ["app", "main"]

app = typer.Typer(
    name="crucible",
    help="Crucible: an open GPU compute exchange with a serverless Python runtime.",
    no_args_is_help=True,
    # `-h` as well, in every command (a subcommand's context inherits this).
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from crucible.agent.main import agent_version

        typer.echo(f"crucible {agent_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Crucible: an open GPU compute exchange with a serverless Python runtime."""


up.register(app)
serve.register(app)
run.register(app)
resources.register(app)
market.register(app)
deploy.register(app)
sim.register(app)
secrets.register(app)
objects.register(app)
volumes.register(app)
pods.register(app)
clusters.register(app)
audit.register(app)
models.register(app)
containers.register(app)
ssh_keys.register(app)
fine_tunes.register(app)


def _one_line_summaries(group: typer.Typer) -> None:
    """Give every command a one-line summary for the command lists of ``--help``: the first
    paragraph of its docstring with the docstring's own line breaks joined (Rich help keeps
    them, which broke each summary mid-sentence in the lists). A group that does nothing
    by itself (`crucible pod`) prints its help, the list of its commands, when given none
    (it said "Missing command")."""
    for info in group.registered_commands:
        if info.short_help is None:
            doc = info.help or inspect.getdoc(info.callback) or ""
            info.short_help = " ".join(doc.split("\n\n")[0].split()) or None
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            if not sub.typer_instance.info.invoke_without_command:
                sub.typer_instance.info.no_args_is_help = True
            _one_line_summaries(sub.typer_instance)


@app.command()
def settings(
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Print every setting: its environment variable, value, default and meaning.

    One block a setting: ``CRUCIBLE_X = value`` (and its default where it differs) on one
    line, never folded, its meaning wrapped below (a 4-column table folded paths and URLs
    mid-word in 80 columns)."""
    from crucible.cli._output import clean, console, print_json
    from crucible.settings import SETTINGS_TABLE, load_settings, shown_value

    current = load_settings()
    rows = [
        {
            "env": f.metadata["env"],
            "value": shown_value(f, getattr(current, f.name)),  # secrets: only whether set
            "default": f.default,
            "meaning": f.metadata["doc"],
        }
        for f in SETTINGS_TABLE
    ]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        value, default = clean(row["value"]), clean(row["default"])
        differs = "" if value == default else f"  (default: {default or '(empty)'})"
        lines = [f"{row['env']} = {value}{differs}"] + [
            f"    {part}"
            for part in textwrap.wrap(clean(row["meaning"]), max(console.width - 4, 40))
        ]
        for line in lines:
            console.print(line, markup=False, highlight=False, soft_wrap=True)


_one_line_summaries(app)


def _stdin_or_empty() -> None:
    """A closed standard input (cron, systemd, `cmd <&-`) reads as empty, as ssh's and
    kubectl's do: descriptor 0 is /dev/null again, so that neither `sys.stdin` nor a file
    opened later (which would take descriptor 0) is taken for it (`exec -i` raised on it)."""
    try:
        os.fstat(0)
    except OSError:
        fd = os.open(os.devnull, os.O_RDONLY)
        if fd != 0:
            os.dup2(fd, 0)
            os.close(fd)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 (the process's stdin)


def _token_advice() -> str | None:
    try:
        from crucible.settings import load_settings

        return refused_token_advice(load_settings())
    except Error:  # settings that do not load were said so before any request
        return None


def main() -> None:
    _stdin_or_empty()
    try:
        app()
    except Error as exc:
        err_console.print(f"[bold red]Error:[/] {shown(exc, lines=True)}")
        if isinstance(exc, AuthError) and (advice := _token_advice()):
            err_console.print(advice, markup=False)
        sys.exit(1)
    except BrokenPipeError:  # `crucible calls | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as exc:  # a local file the command was given: missing, a directory, ...
        err_console.print(f"[bold red]Error:[/] {shown(exc, lines=True)}")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
