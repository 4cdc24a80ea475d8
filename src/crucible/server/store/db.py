"""The engine and migrations.

SQLite (embedded) runs in WAL mode with ``synchronous=NORMAL``: a committed transaction
survives a crash of any process (it can be lost only with the machine's power). PostgreSQL is
chosen by a ``postgresql+psycopg://`` URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text

__all__ = ["create_store_engine", "is_sqlite", "migrate"]

_MIGRATIONS = Path(__file__).parent / "migrations"
# PostgreSQL advisory lock key of schema upgrades: replicas starting at once on one store
# upgrade it one after another (the later ones find it current).
_MIGRATE_LOCK = 0x63727563  # "cruc"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def create_store_engine(url: str) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if is_sqlite(url):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=4
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
    return create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)


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
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATE_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
