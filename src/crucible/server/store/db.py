"""The engine and migrations.

SQLite (embedded) runs in WAL mode with ``synchronous=NORMAL``: a committed transaction
survives a crash of any process (it can be lost only with the machine's power). PostgreSQL is
chosen by a ``postgresql+psycopg://`` URL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Connection,
    Engine,
    QueuePool,
    create_engine,
    event,
    exc,
    inspect,
    make_url,
    text,
)

__all__ = [
    "WriteRefused",
    "connection_at_hand",
    "create_store_engine",
    "is_sqlite",
    "migrate",
    "read_only",
]

_log = logging.getLogger(__name__)
_MIGRATIONS = Path(__file__).parent / "migrations"
# PostgreSQL advisory lock key of schema upgrades: replicas starting at once on one store
# upgrade it one after another (the later ones find it current).
_MIGRATE_LOCK = 0x63727563  # "cruc"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


_SQLITE_CONNECTIONS = 14


class WriteRefused(Exception):
    """A statement other than a SELECT on a connection of a :func:`read_only` engine."""


def read_only(engine: Engine) -> Engine:
    """An engine on ``engine``'s pool whose connections may only read: any statement but a
    SELECT fails with :class:`WriteRefused` before it reaches the database (the transaction
    is then its owner's to roll back). For work tried where it must not wait for a writer's
    lock (on the event loop) and redone elsewhere when it turns out to write.

    The check is an event of this option engine alone (SQLAlchemy keeps an option engine's
    events local to it): a statement through an engine with any such event takes
    SQLAlchemy's event path, about 18 us more on this machine, which ``engine``'s own
    statements do not pay. Make it once (``ServerState.read_engine``): each one made
    registers its event anew."""
    ro = engine.execution_options()
    event.listen(ro, "before_cursor_execute", _refuse_writes)
    return ro


def connection_at_hand(engine: Engine) -> bool:
    """Whether a checkout from ``engine``'s pool now would not wait for another thread to
    give a connection back: one is idle, or the pool has room to open one. For work done on
    the event loop, where such a wait would hold up every request (up to the pool's 30 s
    timeout): without one at hand, do the work in a worker thread. Only a worker thread can
    take it between the look and the checkout, and it gives it back at the end of its
    transaction. Pools that never make a checkout wait (in-memory SQLite's, one connection
    per thread) say True."""
    pool = engine.pool
    # overflow() < 0: fewer connections opened than the pool keeps
    return not isinstance(pool, QueuePool) or pool.checkedin() > 0 or pool.overflow() < 0


def _refuse_writes(
    conn: Connection, cursor: Any, statement: str, params: Any, context: Any, many: bool
) -> None:
    if (context is not None and context.is_crud) or statement.lstrip()[:6].upper() != "SELECT":
        raise WriteRefused(statement.split(None, 1)[0])


def create_store_engine(url: str) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if is_sqlite(url):
        path = make_url(url).database or ""
        on_disk = path not in ("", ":memory:")
        if on_disk:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # The store holds every tenant's calls, logs and the ledger: its owner's alone
            # (it was world-readable). SQLite gives its WAL and shared-memory files the
            # database file's mode.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        # Connections are kept, never opened for one request and closed after it: a new
        # one runs the pragmas below and parses the whole schema at its first statement,
        # which under load (hundreds of agents' syncs a second, more at once than the pool
        # kept) cost more than the syncs' own statements. At most _SQLITE_CONNECTIONS in
        # use, as before (then 4 kept and 10 more opened as needed); a thread beyond waits.
        pool: dict[str, Any] = {"pool_size": _SQLITE_CONNECTIONS}
        if on_disk:  # a QueuePool (in memory: one connection per thread)
            pool["max_overflow"] = 0
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **pool
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    engine = create_engine(url, pool_size=8, max_overflow=8)
    _ping_after_idle(engine)
    return engine


# A pooled PostgreSQL connection idle at least this long is pinged before it is handed out;
# one returned more recently is not. SQLAlchemy's pool_pre_ping pings every checkout: one more
# round trip in front of every transaction of the hot path (a call costs several).
PING_AFTER_IDLE_S = 1.0


def _ping_after_idle(engine: Engine) -> None:
    """Pessimistic disconnect handling (SQLAlchemy's checkout-event recipe), for connections
    that sat idle: a restarted or failed-over PostgreSQL, or one that closed idle sessions,
    costs no request an error; the whole pool is replaced, as pool_pre_ping would. A connection
    that dies within the window fails its one transaction, and the pool drops it."""

    @event.listens_for(engine, "checkin")
    def _returned(dbapi_conn: Any, record: Any) -> None:
        record.info["returned_s"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        returned = record.info.get("returned_s")
        if returned is None or time.monotonic() - returned < PING_AFTER_IDLE_S:
            return  # just connected, or just used
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as e:
            raise exc.InvalidatePoolError(f"a pooled connection was closed: {e}") from e


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent). On PostgreSQL, concurrent
    callers (replicas starting together) take turns: the upgrade holds an advisory lock
    until its transaction ends."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    if engine.dialect.name == "sqlite":
        _clear_unfinished_first_migration(engine)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATE_LOCK})
        cfg.attributes["connection"] = conn
        before = MigrationContext.configure(conn).get_current_revision()
        command.upgrade(cfg, "head")
        after = MigrationContext.configure(conn).get_current_revision()
    if after != before:
        # One line for the whole upgrade: Alembic's own INFO line per migration (dozens on
        # a new store) is silenced where the server sets up its logging.
        steps = len(list(ScriptDirectory.from_config(cfg).iterate_revisions(after, before)))
        _log.info(
            "store schema %s: %d migration%s, now at %s",
            "created" if before is None else f"upgraded from {before}",
            steps,
            "" if steps == 1 else "s",
            after,
        )


def _clear_unfinished_first_migration(engine: Engine) -> None:
    """SQLite runs each migration's DDL outside a transaction: a server killed during the
    very first migrations left tables without a version stamp, and every later start failed
    on "table accounts already exists". Such a store never held anything (no server runs
    before its migrations end): its tables, all Crucible's and with no account in them, are
    dropped and the migrations start again. Anything else is left for the operator."""
    from crucible.server.store.tables import metadata

    with engine.begin() as conn:
        names = set(inspect(conn).get_table_names())
        if not names - {"alembic_version"}:
            return
        if (
            "alembic_version" in names
            and conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one()
        ):
            return  # stamped: a real store
        if not names <= set(metadata.tables) | {"alembic_version"}:
            return  # tables Crucible does not make: not ours to drop
        if "accounts" in names and conn.execute(text("SELECT count(*) FROM accounts")).scalar():
            return
        for name in names:
            conn.execute(text(f'DROP TABLE IF EXISTS "{name}"'))
