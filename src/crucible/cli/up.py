"""`crucible up` / `crucible down`: the embedded exchange on this machine."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import Any

import typer

from crucible.cli._embedded import (
    agent_token_path,
    bootstrap_tokens,
    is_healthy,
    pid_path,
    port_free,
    start_detached,
    stop_detached,
)
from crucible.cli._output import console
from crucible.errors import Error
from crucible.settings import load_settings

__all__ = ["register"]

_PR_SET_PDEATHSIG = 1


def _term_with_parent(prctl: Any) -> None:
    """In the agent, between fork and exec (no imports, no locks): receive SIGTERM when
    `crucible up` ends."""
    prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


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
        for this machine. Builders can use it at once (`crucible run app.py`)."""
        # A one-machine exchange is a development exchange: fake GPUs may register.
        settings = load_settings(port=port, dev_mode=True)
        url = f"http://{settings.bind_host}:{settings.port}"
        if detach:
            start_detached(settings, fake_gpus=fake_gpus)
            console.print(f"Crucible is up at {url} (stop it with `crucible down`)")
            return
        if is_healthy(url):
            raise Error(f"an exchange already answers at {url}; stop it with `crucible down`")
        if not port_free(settings.bind_host, settings.port):
            raise Error(f"port {settings.port} is taken; pick another with --port")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        bootstrap_tokens(settings, url)
        pid_path(settings).write_text(str(os.getpid()))
        agent_cmd = [
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
            agent_cmd += ["--fake-gpus", fake_gpus, "--allow-fake-gpus"]
        prctl = ctypes.CDLL(None).prctl  # resolved here: the child must not load libraries
        # Started from the main thread, before the server: the kernel's parent-death signal
        # follows the thread that forked, and the agent retries until the server answers.
        # uvicorn re-raises SIGTERM after its graceful shutdown, so this process may end
        # before the `finally` below runs: the agent is then told by the kernel.
        agent_proc = [
            subprocess.Popen(
                agent_cmd,
                stdin=subprocess.DEVNULL,
                preexec_fn=functools.partial(_term_with_parent, prctl),
            )
        ]
        if not foreground:
            console.print(
                f"Crucible is up at {url}; builders: `crucible run app.py`. Ctrl-C stops."
            )
        from crucible.cli.serve import run_server

        try:
            run_server(settings)
        finally:
            for p in agent_proc:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=settings.stop_grace_s + 5)
                except subprocess.TimeoutExpired:
                    p.kill()
            pid_path(settings).unlink(missing_ok=True)

    @app.command()
    def down() -> None:
        """Stop the embedded exchange started with `crucible up --detach`."""
        settings = load_settings()
        if stop_detached(settings):
            console.print("Crucible is down.")
        else:
            console.print("No background exchange was running.")
