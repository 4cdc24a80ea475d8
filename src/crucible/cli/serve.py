"""`crucible server` (the control plane) and `crucible agent` (a host)."""

from __future__ import annotations

import gc
import logging
import os
import socket
from pathlib import Path
from typing import Any

import typer

from crucible.errors import AuthError, Error, SettingError
from crucible.settings import Settings, load_settings, without_password

__all__ = ["register", "run_server"]


def run_server(settings: Settings, *, on_ready: object = None, replica: str | None = None) -> None:
    """Run the control plane in this process until interrupted, as replica ``replica`` of
    its store (the name it checked in under; None: a new one)."""
    import uvicorn

    from crucible.server.app import build_state, create_app

    state = build_state(settings)
    app = create_app(state, replica=replica)
    config = uvicorn.Config(
        app,
        host=settings.bind_host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        loop="uvloop" if _has("uvloop") else "asyncio",
        http=_http_protocol(),
        timeout_keep_alive=75,
        # Only a trusted proxy's X-Forwarded-* name the client (uvicorn trusts 127.0.0.1 by
        # default: every local client could then claim any address).
        proxy_headers=bool(settings.trusted_proxies.strip()),
        forwarded_allow_ips=settings.trusted_proxies.strip() or None,
    )
    server = uvicorn.Server(config)
    # Everything built so far (modules, the app, its models) lives as long as the process:
    # keep it out of the cyclic collector's work, and collect the young generation less
    # often, so fewer collection passes land in the middle of a request.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    server.run()  # runs on the configured loop (uvloop when installed)
    state.engine.dispose()


def _http_protocol() -> Any:
    if not _has("httptools"):
        return "h11"
    from crucible.server.http_protocol import CoalescingHttpToolsProtocol

    return CoalescingHttpToolsProtocol


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def check_server_settings(settings: Settings) -> None:
    """What the control plane would refuse as it starts, said in one line (SettingError)
    before it starts: a traceback after "Crucible control plane on ...", and under `crucible
    up` a minute of restarts, was all a wrong setting got."""
    if settings.ports_domain:
        from crucible.server.api.ports_origin import check_domain

        check_domain(settings.ports_domain)


def _open_store(settings: Settings, replica: str | None = None) -> None:
    """:func:`_bootstrap_admin`, with a store URL that cannot be opened said in one line
    (SettingError) instead of SQLAlchemy's traceback."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

    url = settings.effective_database_url
    shown_url = without_password(url)
    scheme = url.partition(":")[0].partition("+")[0]
    if "://" in url and scheme not in ("sqlite", "postgresql"):
        raise SettingError(
            f"CRUCIBLE_DATABASE_URL={shown_url!r}: the store is SQLite or PostgreSQL, not "
            f"{scheme!r}; write sqlite:////path/to/crucible.db or "
            "postgresql://USER:PASSWORD@HOST:PORT/DB"
        )
    try:
        _bootstrap_admin(settings, replica)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise SettingError(
            f"CRUCIBLE_DATABASE_URL={shown_url!r} is not a database URL ({exc}); write "
            "sqlite:////path/to/crucible.db or postgresql://USER:PASSWORD@HOST:PORT/DB"
        ) from None
    except OperationalError as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0]
        raise SettingError(
            f"cannot open the store at {shown_url} ({reason}); is the database running, and "
            "is CRUCIBLE_DATABASE_URL (or --database-url) right?"
        ) from None


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite store URL (resolved, so two spellings of one file match), or None
    (another database, or SQLite in memory)."""
    if not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        database = make_url(url).database
    except ArgumentError:
        return None  # said by _open_store, in its words
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser().resolve()


def _write_new_secret(folder: Path, name: str, text: str) -> Path:
    """Write ``text`` to a new file ``folder/name`` readable by its owner only from the
    start, never over an existing one (it may hold the only copy of another store's token):
    then ``name.2``, ``name.3``... Returns the file written."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = folder / (name if n == 1 else f"{name}.{n}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path
    raise Error(f"{folder}: {name} and 998 numbered copies exist; move some away")


def _refuse_other_settings(engine: Any, settings: Settings, replica: str | None = None) -> None:
    """A replica whose secret or secrets key differ from the running replicas' would sign
    container tokens the others refuse: it is not started (SettingError). One let through
    checks in as ``replica`` (the name its elector then renews; None: a new one)."""
    import time

    from crucible.server.leadership import check_in, new_replica_id, settings_check
    from crucible.server.secretbox import load_secret_box
    from crucible.server.state import load_or_create_secret

    if engine.dialect.name != "postgresql":
        return  # one server per SQLite store
    box = load_secret_box(settings)
    check = settings_check(load_or_create_secret(settings), box.current, box.key_ids)
    now = time.time_ns() // 1_000_000
    with engine.begin() as conn:
        differing = check_in(
            conn,
            replica or new_replica_id(),
            check,
            now,
            round(settings.leader_lease_s * 1000),
        )
    if differing:
        raise SettingError(
            f"the replicas running on this store ({', '.join(differing)}) have another "
            "CRUCIBLE_SECRET than this server (container tokens signed by one would be refused "
            "by the other), or seal secrets with a key this server cannot open, or it with one "
            "they cannot. Give every replica the same CRUCIBLE_SECRET; to rotate the secrets "
            "key replica by replica, first add the new key after the current one on every "
            "replica, then put it first (docs/operators.md, Secrets key)"
        )


def _bootstrap_admin(settings: Settings, replica: str | None = None) -> None:
    """On an empty store, create the operator account and print its admin token once.
    ``replica``: the name this server checks in under among the store's replicas."""
    import time

    from sqlalchemy import func, select
    from sqlalchemy.exc import IntegrityError

    from crucible.protocol.accounts import Scope
    from crucible.server.services.accounts import ensure_account, issue_token
    from crucible.server.store.db import create_store_engine, migrate
    from crucible.server.store.tables import accounts

    engine = create_store_engine(settings.effective_database_url)
    try:
        migrate(engine)
        _refuse_other_settings(engine, settings, replica)
        try:
            with engine.begin() as conn:
                if conn.execute(select(func.count()).select_from(accounts)).scalar_one():
                    return
                now = time.time_ns() // 1_000_000
                account = ensure_account(conn, "operator", now, provider=True)
                token = issue_token(conn, account, Scope.ADMIN, "bootstrap", now).token
        except IntegrityError:
            return  # another replica starting at the same moment made the operator account
        path = _write_new_secret(settings.home_path, "admin-token", token)
        typer.echo(f"Created the operator account; its admin token is in {path}")
        if path.name != "admin-token":
            typer.echo(
                f"({settings.home_path / 'admin-token'} was kept: it holds the admin token of "
                "the store this home was used with before, perhaps its only copy)"
            )
    finally:
        engine.dispose()


def register(app: typer.Typer) -> None:
    @app.command()
    def server(
        host: str = typer.Option(None, help="Address to listen on (CRUCIBLE_BIND_HOST)."),
        port: int = typer.Option(None, help="Port to listen on (CRUCIBLE_PORT)."),
        database_url: str = typer.Option(None, help="Store URL (CRUCIBLE_DATABASE_URL)."),
        dev_mode: bool = typer.Option(
            None,
            "--dev-mode/--no-dev-mode",
            help="Admit hosts with declared fake GPUs (CRUCIBLE_DEV_MODE); for development.",
        ),
    ) -> None:
        """Run the control plane (API, scheduler, metering)."""
        from crucible.cli._home_lock import HomeLock, StoreLock
        from crucible.cli._ports import port_free, port_taken_error
        from crucible.server.leadership import new_replica_id

        settings = load_settings(
            bind_host=host, port=port, database_url=database_url, dev_mode=dev_mode
        )
        url = f"http://{settings.bind_host}:{settings.port}"
        # On the home's own SQLite store, one exchange per home (as `crucible up`): a second
        # scheduler on the same store would run calls twice.
        lock = None if settings.database_url else HomeLock(settings, url)
        store = _sqlite_file(settings.effective_database_url)
        try:
            # And one server per SQLite file, whatever its home or URL spelling.
            store_lock = None if store is None else StoreLock(store, url)
        except BaseException:
            if lock is not None:
                lock.close()
            raise
        try:
            if not port_free(settings.bind_host, settings.port):
                raise port_taken_error(
                    settings.bind_host,
                    settings.port,
                    crucible_answers=False,
                    command="crucible server",
                )
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
            # Alembic announces each of its plugins and each migration at INFO: noise, not
            # news (the store logs one line for a whole upgrade).
            logging.getLogger("alembic.runtime").setLevel(logging.WARNING)
            check_server_settings(settings)
            # Its name among the store's replicas, from its check-in on (one row, renewed).
            replica = new_replica_id()
            _open_store(settings, replica)
            typer.echo(f"Crucible control plane on {url}")
            run_server(settings, replica=replica)
        finally:
            if store_lock is not None:
                store_lock.close()
            if lock is not None:
                lock.close()

    @app.command()
    def agent(
        server: str = typer.Option(..., "--server", help="Control plane URL."),
        token: str = typer.Option(
            None, "--token", envvar="CRUCIBLE_TOKEN", help="Host token (scope host)."
        ),
        token_file: Path = typer.Option(None, help="Read the host token from this file."),
        name: str = typer.Option(None, help="Host name (default: this machine's hostname)."),
        region: str = typer.Option("local", help="Region this host is in."),
        energy_source: str = typer.Option(
            None, "--energy-source", help="Declared energy source (hydro, solar, flare gas...)."
        ),
        carbon: int = typer.Option(None, "--carbon", help="Declared carbon intensity, gCO2/kWh."),
        fake_gpus: str = typer.Option(
            None, help="Declare fake GPUs for testing, e.g. 4xH100 (needs --allow-fake-gpus)."
        ),
        allow_fake_gpus: bool = typer.Option(
            False,
            "--allow-fake-gpus",
            help="Permit --fake-gpus (or set CRUCIBLE_ALLOW_FAKE_GPUS=1).",
        ),
        agent_dir: Path = typer.Option(None, help="Agent state directory (CRUCIBLE_AGENT_DIR)."),
        runtime: str = typer.Option(
            None,
            help="Container runtime: auto (bwrap where this machine can sandbox), bwrap, or "
            "process (owner's code only) (CRUCIBLE_RUNTIME; docs/sandbox.md).",
        ),
    ) -> None:
        """Run a host agent: register this machine and run the containers it is given."""
        from crucible.agent.main import Agent

        if "," in server:
            raise Error(
                f"--server {server!r}: the agent takes one server URL; with several "
                "replicas, give it the load balancer's (docs/operators.md, Running replicas)"
            )
        if token_file is not None:
            try:
                token = token_file.read_text().strip()
            except OSError as exc:
                raise Error(
                    f"--token-file {token_file}: cannot read it ({exc.strerror}); write the "
                    "host token there (`crucible token create --scope host`, docs/hosts.md)"
                ) from None
        if not token:
            raise Error("the agent needs a host token: --token, --token-file or CRUCIBLE_TOKEN")
        overrides: dict[str, Any] = {}
        if allow_fake_gpus:
            overrides["allow_fake_gpus"] = True
        if agent_dir is not None:
            overrides["agent_dir"] = str(agent_dir)
        if runtime is not None:
            overrides["runtime"] = runtime
        settings = load_settings(**overrides)
        from pydantic import ValidationError

        from crucible.protocol.hosts import HostRegister
        from crucible.sdk._checks import from_validation_error

        host_name = name or socket.gethostname()
        try:  # what the registration will declare, checked now (not as a traceback later)
            HostRegister.model_validate(
                {
                    "name": host_name,
                    "region": region,
                    "energy_source": energy_source,
                    "carbon_g_per_kwh": carbon,
                    "inventory": {"cpu_cores": 1, "memory_mib": 1, "disk_mib": 0},
                }
            )
        except ValidationError as exc:
            flags = {
                "name": "--name",
                "region": "--region",
                "energy_source": "--energy-source",
                "carbon_g_per_kwh": "--carbon",
            }
            raise from_validation_error(exc, "crucible agent", flags) from None
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        # What the agent shares with its sandboxes (code bundles, relay sockets, images) must
        # be readable by their users whatever the operator's shell had (`umask 077` before
        # writing a token file made every container fail on its code); what is private is
        # created with its own mode.
        os.umask(0o022)
        try:
            Agent(
                settings,
                server_url=server,
                token=token,
                name=host_name,
                region=region,
                energy_source=energy_source,
                carbon_g_per_kwh=carbon,
                fake_gpus=fake_gpus,
            ).run()
        except AuthError as exc:
            # The server's words name CRUCIBLE_TOKEN; say where this token came from.
            source = f"--token-file {token_file}" if token_file is not None else "--token"
            reason = exc.message.split(";")[0]
            raise AuthError(
                f"the server refused the host token from {source} ({reason}): make one with "
                "`crucible token create --scope host` (docs/hosts.md) and give it to the agent"
            ) from None
