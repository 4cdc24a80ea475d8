"""The embedded exchange on this machine: state in $CRUCIBLE_HOME, one `crucible up` process
(the control plane, supervising one agent process), started by `crucible up` (or by
`crucible run` when none is configured), found and stopped through the home's lock."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from crucible.cli._home_lock import RunningExchange, running_exchange
from crucible.cli._ports import port_free, port_taken_error
from crucible.errors import Error
from crucible.protocol.accounts import Scope
from crucible.protocol.transport import Transport
from crucible.sdk._config import ClientConfig, read_client_config, write_client_config
from crucible.settings import Settings

__all__ = [
    "bootstrap_tokens",
    "describe_running",
    "ensure_running",
    "is_healthy",
    "local_url",
    "refused_token_advice",
    "start_detached",
    "stop_detached",
]

log = logging.getLogger("crucible.cli")


def refused_token_advice(settings: Settings) -> str | None:
    """What to do when the exchange refuses the token `crucible up` wrote (revoked, say):
    restarting this machine's exchange writes a new one (bootstrap_tokens). None when the
    token is not that one (CRUCIBLE_TOKEN or CRUCIBLE_SERVER_URL set) or no exchange runs
    here."""
    if settings.token or settings.server_url or running_exchange(settings) is None:
        return None
    return (
        f"The token is the one `crucible up` wrote in {settings.home_path}: restart this "
        "machine's exchange with `crucible down && crucible up -d`, which writes a new one"
    )


def log_path(settings: Settings) -> Path:
    return settings.home_path / "logs" / "up.log"


def agent_token_path(settings: Settings) -> Path:
    return settings.home_path / "agent-token"


def local_url(settings: Settings) -> str:
    return f"http://{settings.bind_host}:{settings.port}"


def is_healthy(url: str, timeout_s: float = 1.0) -> bool:
    try:
        t = Transport(url, None, timeout_s=timeout_s, retry_for_s=0)
        status, _ = t.request_raw("GET", "/healthz", retry=False)
        t.close()
        return status == 200
    except Error:
        return False


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

    try:
        config = read_client_config(settings.replace(server_url="", token=""))
    except Error as exc:  # unreadable (a full disk cut it short): a new token replaces it
        log.warning("%s; writing a new one with a new token", exc.message)
        config = None
    agent_file = agent_token_path(settings)
    engine = create_store_engine(settings.effective_database_url)
    try:
        migrate(engine)
        now = time.time_ns() // 1_000_000
        with engine.begin() as conn:
            account = ensure_account(conn, "local", now, provider=True)

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


def _log_tail(log: Path, offset: int, lines: int = 12) -> str:
    """The relevant last lines this start wrote to ``log`` (from ``offset``), indented for a
    message: a traceback's frames are left out, its exception kept."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()]
    tracebacks = [i for i, line in enumerate(kept) if line.startswith("Traceback")]
    if tracebacks:  # what led to the exception, without the log lines before it
        kept = [
            line
            for line in kept[tracebacks[0] :]
            if not line.startswith((" ", "\t", "Traceback", "The above exception", "During ha"))
        ]
    shown = ["".join(c if c.isprintable() else "?" for c in line)[:200] for line in kept]
    return "\n".join("  " + line for line in shown[-lines:])


def start_detached(
    settings: Settings,
    *,
    fake_gpus: str | None = None,
    wait_s: float = 60,
    command: str = "crucible up --detach",
) -> str:
    """Start `crucible up` in the background; returns its URL once the control plane answers
    and its agent has registered. The exchange already running from this home is used as is.
    Raises a clear error (what did not start, and the log's last lines) otherwise, and then
    leaves nothing running."""
    running = running_exchange(settings)
    if running is not None:
        return _wait_running(settings, running, wait_s)
    url = local_url(settings)
    if not port_free(settings.bind_host, settings.port):
        raise port_taken_error(
            settings.bind_host, settings.port, crucible_answers=is_healthy(url), command=command
        )
    log = log_path(settings)
    log.parent.mkdir(parents=True, exist_ok=True)
    offset = log.stat().st_size if log.exists() else 0
    started_ms = int(time.time() * 1000)
    cmd = [sys.executable, "-m", "crucible.cli.main", "up", "--foreground"]
    if fake_gpus:
        cmd += ["--fake-gpus", fake_gpus]
    env = dict(os.environ, CRUCIBLE_HOME=str(settings.home_path), CRUCIBLE_PORT=str(settings.port))
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
    deadline = time.monotonic() + wait_s
    healthy = False
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            other = running_exchange(settings)
            if other is not None and other.pid != proc.pid:  # another start won the home
                return _wait_running(settings, other, max(1.0, deadline - time.monotonic()))
            raise Error(
                f"the embedded exchange exited while starting (code {proc.returncode}). "
                f"Last lines of {log}:\n{_log_tail(log, offset)}"
                "\nFix the cause and run `crucible up --detach` again."
            )
        healthy = healthy or is_healthy(url)
        if healthy and _agent_ready(settings, url, started_ms):
            return url
        time.sleep(0.1)
    _stop_pid(proc.pid, settings, timeout_s=settings.stop_grace_s + 10)
    what = (
        f"its control plane answers at {url} but its agent did not register"
        if healthy
        else f"its control plane did not answer at {url}"
    )
    raise Error(
        f"the embedded exchange did not become ready within {wait_s:g} s: {what}; it was "
        f"stopped. Last lines of {log}:\n{_log_tail(log, offset)}"
    )


def _wait_running(settings: Settings, running: RunningExchange, wait_s: float) -> str:
    """The URL of the exchange that holds this home, once it answers with its agent ready."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if running.url and is_healthy(running.url) and _agent_ready(settings, running.url):
            return running.url
        time.sleep(0.1)
        running = running_exchange(settings) or running
    where = f"pid {running.pid}, {running.url}" if running.pid else "still starting"
    raise Error(
        f"the exchange running from {settings.home_path} ({where}) is not ready: its control "
        f"plane or its agent does not answer; see {log_path(settings)}, or "
        f"{running.stop_hint()} and start it again"
    )


def _agent_ready(settings: Settings, url: str, since_ms: int = 0) -> bool:
    """Whether an agent is ready: one that has registered or synced since ``since_ms`` (a
    restarted exchange's store still holds its last run's host as ready, with that run's
    inventory)."""
    return any(
        h.get("state") == "ready" and int(h.get("last_seen_ms") or 0) >= since_ms
        for h in _hosts(settings, url) or []
    )


def _hosts(settings: Settings, url: str) -> list[dict[str, Any]] | None:
    config = read_client_config(settings.replace(server_url="", token=""))
    if config is None:
        return None
    try:
        t = Transport(url, config.token, retry_for_s=0)
        hosts = t.get("/v1/hosts", retry=False)
        t.close()
    except Error:
        return None
    return list(hosts)


def describe_running(settings: Settings, url: str) -> list[str]:
    """What is actually running from this home, one line per part: the control plane (does
    it answer?) and the local agent (registered? ready? its resources)."""
    running = running_exchange(settings)
    pid = f" (pid {running.pid})" if running is not None and running.pid else ""
    if not is_healthy(url):
        return [f"control plane: not answering at {url}{pid}"]
    lines = [f"control plane: answering at {url}{pid}, state in {settings.home_path}"]
    hosts = _hosts(settings, url)
    if hosts is None:
        return [*lines, "agent: unknown (no token for this exchange in this home)"]
    if not hosts:
        return [*lines, "agent: not registered (no host yet); calls will wait"]
    for h in hosts:
        inv = h.get("inventory", {})
        gpus = inv.get("gpus") or []
        gpu_text = f", {len(gpus)} GPU(s)" if gpus else ", no GPUs"
        name = "".join(c if c.isprintable() else "?" for c in str(h.get("name")))
        lines.append(
            f"agent: host {name} {h.get('state')}, {inv.get('cpu_cores')} cores, "
            f"{inv.get('memory_mib')} MiB memory{gpu_text}, {h.get('containers', 0)} container(s)"
        )
    return lines


def _stop_pid(pid: int, settings: Settings, timeout_s: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child: reap it
                return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def stop_detached(settings: Settings, timeout_s: float | None = None) -> RunningExchange | None:
    """Stop the exchange running from this home, whatever its port; None when none was."""
    running = running_exchange(settings)
    if running is None:
        return None
    if not running.pid:  # holds the lock, details not written yet: it is starting
        time.sleep(1)
        running = running_exchange(settings)
        if running is None or not running.pid:
            return running
    _stop_pid(running.pid, settings, timeout_s or settings.stop_grace_s + 20)
    return running


def ensure_running(
    settings: Settings, *, start: bool = True, command: str = "crucible run ..."
) -> ClientConfig:
    """The configured exchange. With ``start`` (``command`` runs work: `crucible run`,
    `deploy`, `serve`), an embedded one is started here when none is configured or the
    configured local one is down, and left running; without it (a command that only reads
    or changes what an exchange holds), that is an error that says how to start one."""
    config = read_client_config(settings)
    if config is not None and (settings.server_url or is_healthy(config.server_url)):
        return config
    if settings.server_url:
        raise Error(
            f"CRUCIBLE_SERVER_URL={settings.server_url} is set but no token is configured for "
            "it: set CRUCIBLE_TOKEN (the token in client.json is sent only to the server it "
            "came from)"
        )
    local = local_url(settings)
    running = running_exchange(settings)
    if config is not None and config.server_url != local and running is None:
        raise Error(
            f"the configured exchange {config.server_url} does not answer; start it, or remove "
            f"{settings.home_path / 'client.json'} to use an embedded one"
        )
    from crucible.cli._output import err_console

    if running is None:
        if not start:
            raise Error(
                f"no exchange is running for {settings.home_path}: start one with "
                "`crucible up --detach` (`crucible run FILE` also starts one), or point "
                "CRUCIBLE_SERVER_URL and CRUCIBLE_TOKEN at a shared exchange"
            )
        if not port_free(settings.bind_host, settings.port):
            raise port_taken_error(
                settings.bind_host,
                settings.port,
                crucible_answers=is_healthy(local),
                command=command,
            )
        err_console.print(
            f"[dim]Starting an embedded exchange at {local} (state in {settings.home_path}); "
            "it keeps running after this command: `crucible down` stops it…[/]"
        )
    start_detached(settings, command=command)
    config = read_client_config(settings)
    if config is None:
        raise Error(
            f"the exchange of {settings.home_path} started but wrote no client configuration "
            f"({settings.home_path / 'client.json'}); stop it with `crucible down` and retry"
        )
    return config
