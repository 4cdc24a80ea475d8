"""The embedded exchange on this machine: state in $CRUCIBLE_HOME, one server process and
one agent process, started by `crucible up` (or by `crucible run` when none is configured)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from crucible.errors import Error
from crucible.protocol.accounts import Scope
from crucible.protocol.transport import Transport
from crucible.sdk._config import ClientConfig, read_client_config, write_client_config
from crucible.settings import Settings

__all__ = [
    "bootstrap_tokens",
    "ensure_running",
    "is_healthy",
    "pid_path",
    "start_detached",
    "stop_detached",
]


def pid_path(settings: Settings) -> Path:
    return settings.home_path / "up.pid"


def log_path(settings: Settings) -> Path:
    return settings.home_path / "logs" / "up.log"


def agent_token_path(settings: Settings) -> Path:
    return settings.home_path / "agent-token"


def is_healthy(url: str, timeout_s: float = 1.0) -> bool:
    try:
        t = Transport(url, None, timeout_s=timeout_s, retry_for_s=0)
        status, _ = t.request_raw("GET", "/healthz", retry=False)
        t.close()
        return status == 200
    except Error:
        return False


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def bootstrap_tokens(settings: Settings, url: str) -> tuple[str, str]:
    """The local account's builder token and host token, created on first start.

    Tokens are stored hashed, so their plaintext lives only in $CRUCIBLE_HOME/client.json and
    $CRUCIBLE_HOME/agent-token (mode 0600); when those files are gone, new tokens are made.
    """
    from sqlalchemy import select

    from crucible.server.auth import hash_token
    from crucible.server.services.accounts import ensure_account, issue_token
    from crucible.server.store.db import create_store_engine, migrate
    from crucible.server.store.tables import tokens

    config = read_client_config(settings.replace(server_url="", token=""))
    agent_file = agent_token_path(settings)
    engine = create_store_engine(settings.effective_database_url)
    try:
        migrate(engine)
        now = time.time_ns() // 1_000_000
        with engine.begin() as conn:
            account = ensure_account(conn, "local", now)

            def valid(token: str) -> bool:
                row = conn.execute(
                    select(tokens.c.revoked).where(tokens.c.hash == hash_token(token))
                ).first()
                return bool(token) and row is not None and not row.revoked

            user = config.token if config else ""
            if not valid(user):
                user = issue_token(conn, account, Scope.ADMIN, "crucible up", now).token
            host = agent_file.read_text().strip() if agent_file.exists() else ""
            if not valid(host):
                host = issue_token(conn, account, Scope.HOST, "local agent", now).token
    finally:
        engine.dispose()
    write_client_config(settings, ClientConfig(url, user))
    agent_file.write_text(host)
    agent_file.chmod(0o600)
    return user, host


def start_detached(settings: Settings, *, fake_gpus: str | None = None, wait_s: float = 60) -> str:
    """Start `crucible up` in the background; returns its URL once it is healthy."""
    url = f"http://{settings.bind_host}:{settings.port}"
    if is_healthy(url):
        return url
    log = log_path(settings)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "crucible.cli.main", "up", "--foreground"]
    if fake_gpus:
        cmd += ["--fake-gpus", fake_gpus]
    env = dict(os.environ, CRUCIBLE_HOME=str(settings.home_path), CRUCIBLE_PORT=str(settings.port))
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Error(
                f"the embedded exchange exited at start (code {proc.returncode}); see {log}"
            )
        if is_healthy(url) and _agent_ready(settings, url):
            return url
        time.sleep(0.1)
    raise Error(f"the embedded exchange did not become ready within {wait_s:g} s; see {log}")


def _agent_ready(settings: Settings, url: str) -> bool:
    config = read_client_config(settings.replace(server_url="", token=""))
    if config is None:
        return False
    try:
        t = Transport(url, config.token, retry_for_s=0)
        hosts = t.get("/v1/hosts", retry=False)
        t.close()
    except Error:
        return False
    return any(h["state"] == "ready" for h in hosts)


def stop_detached(settings: Settings, timeout_s: float = 20) -> bool:
    """Stop a background exchange; False when none was running."""
    path = pid_path(settings)
    if not path.exists():
        return False
    pid = int(path.read_text().strip() or 0)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return True


def ensure_running(settings: Settings) -> ClientConfig:
    """The configured exchange; an embedded one is started here when none is configured or
    the configured local one is down."""
    config = read_client_config(settings)
    if config is not None and (settings.server_url or is_healthy(config.server_url)):
        return config
    if settings.server_url:
        raise Error(f"CRUCIBLE_SERVER_URL={settings.server_url} is set but no token is configured")
    local = f"http://{settings.bind_host}:{settings.port}"
    if config is not None and config.server_url != local:
        raise Error(
            f"the configured exchange {config.server_url} does not answer; start it, or remove "
            f"{settings.home_path / 'client.json'} to use an embedded one"
        )
    from crucible.cli._output import err_console

    err_console.print(
        f"[dim]Starting an embedded exchange at {local} (state in {settings.home_path})…[/]"
    )
    start_detached(settings)
    config = read_client_config(settings)
    assert config is not None
    return config
