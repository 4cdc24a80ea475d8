"""`crucible container list|exec|port-forward|proxy|ssh`: find and reach a running container
of your account through the control plane (hosts only dial out; docs/access.md). The
commands are thin: the work is in :mod:`crucible.sdk._tunnels`, which pod commands call
too."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import typer

from crucible.cli._embedded import ensure_running
from crucible.cli._output import clean, console, err_console, fmt_time, print_json, table
from crucible.errors import (
    AuthError,
    ConflictError,
    Error,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from crucible.protocol.access import AccessOpen
from crucible.protocol.containers import ContainerSummary
from crucible.protocol.transport import url_part
from crucible.sdk import _tunnels
from crucible.sdk._client import Client
from crucible.settings import load_settings

__all__ = ["PASSTHROUGH", "exec_in", "port_forward_to", "proxy_to", "register", "ssh_to"]

# Commands that take `-- CMD ARGS`: options after -- belong to the command.
# A command's own options pass through (`exec POD df -h`): only `--help` is the CLI's here.
PASSTHROUGH = {
    "allow_extra_args": True,
    "ignore_unknown_options": True,
    "help_option_names": ["--help"],
}


def register(app: typer.Typer) -> None:
    container_app = typer.Typer(
        help="Reach a running container: exec, port-forward, SSH.", no_args_is_help=True
    )
    app.add_typer(container_app, name="container")

    @container_app.command("list")
    def list_(
        app_name: str = typer.Option(None, "--app", help="Only this app's (its name or id)."),
        all_: bool = typer.Option(False, "--all", help="Stopped containers too."),
        limit: int = typer.Option(100, "--limit", min=1, max=1000, help="At most this many."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Your running containers, newest first: the ids `container exec`, `ssh` and
        `port-forward` take."""
        config = ensure_running(load_settings(), start=False)
        client = Client(config.server_url, config.token)
        try:
            query = f"limit={limit}&ended={'true' if all_ else 'false'}"
            if app_name:
                query += f"&app={url_part(app_name)}"
            rows = [
                ContainerSummary.model_validate(r) for r in client.get(f"/v1/containers?{query}")
            ]
        finally:
            client.close()
        if as_json:
            print_json([r.model_dump(mode="json") for r in rows])
            return
        if not rows:
            where = f" of app {app_name}" if app_name else ""
            console.print(
                f"no {'' if all_ else 'running '}containers{where}"
                + ("" if all_ else " (--all for stopped ones too)"),
                markup=False,
                highlight=False,
            )
            return
        table(
            "containers",
            ["id", "app", "function", "state", "gpu", "started"],
            [
                [
                    r.id,
                    r.app,
                    r.function,
                    r.state if r.exit_reason in (None, r.state) else f"{r.state} ({r.exit_reason})",
                    f"{r.gpu_count}x{r.gpu_model}" if r.gpu_model else "-",
                    fmt_time(r.created_ms),
                ]
                for r in rows
            ],
            ids=["id"],
        )

    @container_app.command("exec", context_settings=PASSTHROUGH)
    def exec_(
        container: str = typer.Argument(..., help="The container's id."),
        command: list[str] = typer.Argument(None, help="The command, after --."),
        interactive: bool = typer.Option(
            False, "-i", "--interactive", help="Send this terminal's input (stdin)."
        ),
        tty: bool = typer.Option(False, "-t", "--tty", help="A terminal (with -i: -it)."),
    ) -> None:
        """Run a command inside the container: `crucible container exec ID -- CMD ARGS`.
        Streams stdin (-i), stdout and stderr; exits with the command's status. `-it` gives
        a terminal: keys, Ctrl-C and window resizes reach the process."""
        exec_in(lambda: container, command, interactive=interactive, tty=tty, what="container")

    @container_app.command("port-forward")
    def port_forward(
        container: str = typer.Argument(..., help="The container's id."),
        ports: str = typer.Argument(..., help="LOCAL[:REMOTE], e.g. 8888 or 8080:80."),
        address: str = typer.Option("127.0.0.1", "--address", help="Local address to listen on."),
    ) -> None:
        """Forward a local TCP port to a port inside the container (its own network
        namespace: this works with the container's network off)."""
        port_forward_to(lambda: container, container, ports, address)

    @container_app.command("proxy")
    def proxy(
        container: str = typer.Argument(..., help="The container's id (OpenSSH's %h)."),
        user: str = typer.Option(None, "--user", help="The login name ssh will send."),
    ) -> None:
        """Connect stdin/stdout to the container's SSH server, for OpenSSH:
        `ssh -o ProxyCommand='crucible container proxy %h' crucible@ID`."""
        proxy_to(lambda: container, user)

    @container_app.command("ssh", context_settings=PASSTHROUGH)
    def ssh(
        container: str = typer.Argument(..., help="The container's id."),
        command: list[str] = typer.Argument(None, help="A command to run, after --."),
        identity: str = typer.Option(
            None, "-i", "--identity", help="The private key (default: ssh's own choice)."
        ),
    ) -> None:
        """SSH into the container with your registered keys (`crucible ssh-key add`), via
        OpenSSH and `crucible container proxy`: a login shell, or `-- CMD`."""
        ssh_to(lambda: container, command, identity)


# The commands' work, shared with `crucible pod exec|port-forward|proxy|ssh`: ``target``
# names the container once the exchange runs (a pod resolves to its current container).


def exec_in(
    target: Callable[[], str],
    command: list[str] | None,
    *,
    interactive: bool,
    tty: bool,
    what: str,
) -> None:
    argv = list(command or [])
    if tty and not sys.stdin.isatty():
        # As ssh does: a terminal needs one here. With a pipe or a file (or /dev/null) as
        # stdin, -t waited forever at its end; without it the command reads it to its end.
        err_console.print(
            "Pseudo-terminal will not be allocated because stdin is not a terminal.",
            markup=False,
            highlight=False,
        )
        tty, interactive = False, True
        if not argv:
            argv = ["/bin/sh", "-c", 'exec "${SHELL:-/bin/sh}" -l']
    if not argv:
        if not tty:
            raise InvalidRequestError(
                f"give the command after --: crucible {what} exec NAME -- ls -la "
                "(or -it for a shell)"
            )
        argv = ["/bin/sh", "-c", 'exec "${SHELL:-/bin/sh}" -l']
    config = ensure_running(load_settings(), start=False)
    container = target()
    if tty:
        code = _tunnels.exec_interactive(config.server_url, config.token, container, argv)
    else:
        code = _tunnels.exec_command(
            config.server_url,
            config.token,
            container,
            argv,
            stdin=sys.stdin.buffer if interactive else None,
        )
    raise typer.Exit(code)


def port_forward_to(target: Callable[[], str], name: str, ports: str, address: str) -> None:
    try:
        local, remote = _tunnels.parse_forward(ports)
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from None
    config = ensure_running(load_settings(), start=False)
    container = target()
    _check_reachable(config.server_url, config.token, container, remote)

    def listening(port: int) -> None:
        console.print(
            f"Forwarding {address}:{port} -> {clean(name)}:{remote} (Ctrl-C to stop)",
            markup=False,
        )

    _tunnels.port_forward(
        config.server_url,
        config.token,
        container,
        local,
        remote,
        bind=address,
        on_listening=listening,
    )


def _check_reachable(server_url: str, token: str, container: str, port: int) -> None:
    """Fail now, not at the first connection, when the container is not yours or not running:
    one session to the port, closed at once. Nothing listening there yet is fine (the
    forward is often opened before the server inside starts)."""
    try:
        probe = AccessOpen(kind="tcp", port=port)
        _tunnels.AccessSession(server_url, token, container, probe).close()
    except (NotFoundError, ConflictError, AuthError, PermissionDeniedError):
        raise
    except Error:
        pass


def proxy_to(target: Callable[[], str], user: str | None) -> None:
    config = ensure_running(load_settings(), start=False)
    raise typer.Exit(_tunnels.proxy(config.server_url, config.token, target(), user=user))


def ssh_to(target: Callable[[], str], command: list[str] | None, identity: str | None) -> None:
    settings = load_settings()
    config = ensure_running(settings, start=False)
    container = target()
    # A container that is not yours or not running is said in one line here: ssh printed
    # its own errors around the proxy's.
    _check_reachable(config.server_url, config.token, container, 22)
    known = settings.home_path / "known_hosts"
    known.parent.mkdir(parents=True, exist_ok=True)
    argv = _tunnels.ssh_command(
        container, list(command or []), known_hosts=str(known), identity=identity
    )
    try:
        code = subprocess.call(argv, env=os.environ.copy())
    except FileNotFoundError:
        raise InvalidRequestError(
            "no `ssh` command here: install OpenSSH's client (apt-get install openssh-client)"
        ) from None
    raise typer.Exit(code)
