"""`crucible up` / `crucible down`: the embedded exchange on this machine."""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading

import typer

from crucible.cli._embedded import (
    agent_token_path,
    bootstrap_tokens,
    describe_running,
    is_healthy,
    local_url,
    start_detached,
    stop_detached,
)
from crucible.cli._home_lock import HomeLock, running_exchange
from crucible.cli._output import console, err_console
from crucible.cli._ports import port_free, port_taken_error
from crucible.cli._supervisor import ProcessSupervisor
from crucible.cli.serve import check_server_settings
from crucible.errors import Error, InvalidGpuError
from crucible.protocol.gpus import parse_fake_gpus
from crucible.settings import Settings, load_settings

__all__ = ["register"]


def _agent_argv(settings: Settings, url: str, fake_gpus: str | None) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "crucible.cli.main",
        "agent",
        "--server",
        url,
        "--token-file",
        str(agent_token_path(settings)),
        "--name",
        socket.gethostname(),
    ]
    if fake_gpus:
        argv += ["--fake-gpus", fake_gpus, "--allow-fake-gpus"]
    return argv


def _server_argv(settings: Settings) -> list[str]:
    """The control plane on the home's store, with its address given explicitly (this
    process holds the home's lock for it)."""
    return [
        sys.executable,
        "-m",
        "crucible.cli.main",
        "server",
        "--host",
        settings.bind_host,
        "--port",
        str(settings.port),
        "--database-url",
        settings.effective_database_url,
        *(["--dev-mode"] if settings.dev_mode else []),
    ]


def _print_running(settings: Settings, url: str) -> None:
    for line in describe_running(settings, url):
        console.print(f"  {line}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    @app.command()
    def up(
        port: int = typer.Option(None, help="Port (CRUCIBLE_PORT, default 8745)."),
        detach: bool = typer.Option(False, "--detach", "-d", help="Run in the background."),
        foreground: bool = typer.Option(False, "--foreground", hidden=True),
        fake_gpus: str = typer.Option(
            None, help="Give the local host fake GPUs for testing, e.g. 2xH100."
        ),
    ) -> None:
        """Start an embedded exchange: control plane (SQLite in $CRUCIBLE_HOME) and an agent
        for this machine, each restarted if it dies. One exchange per $CRUCIBLE_HOME. Builders can
        use it at once (`crucible run app.py`)."""
        if fake_gpus:
            # Checked here: the agent would refuse them and be restarted forever while this
            # command waits for it to register.
            try:
                parse_fake_gpus(fake_gpus)
            except InvalidGpuError as exc:
                raise InvalidGpuError(
                    f"--fake-gpus {fake_gpus!r}: {exc.message}; write e.g. 2xH100"
                ) from None
        # A one-machine exchange is a development exchange: fake GPUs may register.
        settings = load_settings(port=port, dev_mode=True)
        check_server_settings(settings)
        url = local_url(settings)
        if detach:
            running = running_exchange(settings)
            if running is not None and running.url and running.url != url:
                raise Error(
                    f"an exchange is already running from {settings.home_path} (pid "
                    f"{running.pid}, {running.url}); use it, or {running.stop_hint()}. One "
                    "exchange per home: give another one its own CRUCIBLE_HOME."
                )
            url = start_detached(settings, fake_gpus=fake_gpus)
            verb = "already up" if running is not None else "up"
            console.print(f"Crucible is {verb} at {url} (stop it with `crucible down`):")
            _print_running(settings, url)
            if running is not None and fake_gpus:
                # The running agent keeps the GPUs it started with (see its line above).
                err_console.print(
                    f"[yellow]Note:[/] --fake-gpus {fake_gpus} was not applied: the exchange "
                    "was already up. Run `crucible down`, then `crucible up --detach "
                    f"--fake-gpus {fake_gpus}` to start it with them."
                )
            return
        lock = HomeLock(settings, url)  # refuses a second exchange on this home, any port
        children: list[ProcessSupervisor] = []
        # SIGTERM (`crucible down`) unwinds to the clean-up below: the agent, then the control
        # plane stopped, the home released, before this process ends.
        signal.signal(signal.SIGTERM, _exit_on_term)
        # Ctrl-C stops it even when started from a script that ignores SIGINT (`up &`).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            if not port_free(settings.bind_host, settings.port):
                raise port_taken_error(
                    settings.bind_host,
                    settings.port,
                    crucible_answers=is_healthy(url),
                    command="crucible up",
                )
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
            bootstrap_tokens(settings, url)
            # Both are restarted with backoff whenever they die; the agent retries until the
            # control plane answers.
            grace = settings.stop_grace_s
            children.append(
                ProcessSupervisor(
                    "control plane",
                    _server_argv(settings),
                    stop_grace_s=grace,
                    # Back well within the clients' retry window (30 s), however often it
                    # died: a wait as long as the window failed their requests.
                    max_delay_s=5.0,
                )
            )
            children.append(
                ProcessSupervisor(
                    "agent", _agent_argv(settings, url, fake_gpus), stop_grace_s=grace
                )
            )
            for child in children:
                child.start()
            if not foreground:
                console.print(
                    f"Crucible is up at {url}; builders: `crucible run app.py`. Ctrl-C stops."
                )
                threading.Thread(
                    target=_report_when_ready, args=(settings, url), daemon=True
                ).start()
            threading.Event().wait()  # until a signal: Ctrl-C or SIGTERM
        finally:
            for child in reversed(children):  # the agent's last report reaches the server
                child.stop()
            lock.close()

    @app.command()
    def down() -> None:
        """Stop the embedded exchange running from $CRUCIBLE_HOME, whatever its port."""
        settings = load_settings()
        stopped = stop_detached(settings)
        if stopped is not None:
            console.print(f"Crucible is down (pid {stopped.pid}, {stopped.url}).", markup=False)
        else:
            console.print(f"No exchange was running from {settings.home_path}.", markup=False)


def _exit_on_term(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
    raise SystemExit(128 + signum)


def _report_when_ready(settings: Settings, url: str, wait_s: float = 60) -> None:
    """In the foreground `crucible up`: say what runs once the agent has registered."""
    import time

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        lines = describe_running(settings, url)
        if any(line.startswith("agent: host") for line in lines):
            for line in lines:
                console.print(f"  {line}", markup=False, highlight=False)
            return
        time.sleep(0.5)
    console.print("  the agent has not registered yet; see the log above", markup=False)
