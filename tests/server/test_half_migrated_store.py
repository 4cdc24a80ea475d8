"""SQLite runs migrations' DDL outside a transaction: a server killed during its very first
migrations left tables without a version stamp, and every later start failed with "table
accounts already exists; is the database running?". Such a store never held anything: it
is started again. A store that is stamped, or holds tables that are not Crucible's, is left
alone."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import inspect, text

from crucible.server.store.db import alembic_config, create_store_engine, migrate
from crucible.server.store.tables import metadata


def _head(url: str) -> str:
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one())
    finally:
        engine.dispose()


def test_a_first_migration_cut_short_is_run_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crucible.db'}"
    engine = create_store_engine(url)
    try:
        cfg = alembic_config(url)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0010")
        with engine.begin() as conn:  # killed before the stamp was written
            conn.execute(text("DELETE FROM alembic_version"))
        migrate(engine)
        with engine.connect() as conn:
            assert set(metadata.tables) <= set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    migrated = tmp_path / "fresh.db"
    fresh = create_store_engine(f"sqlite:///{migrated}")
    try:
        migrate(fresh)
    finally:
        fresh.dispose()
    assert _head(url) == _head(f"sqlite:///{migrated}")


def test_tables_that_are_not_crucibles_are_never_dropped(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'theirs.db'}"
    engine = create_store_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE notes (body TEXT)"))
            conn.execute(text("INSERT INTO notes VALUES ('keep me')"))
        migrate(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT body FROM notes")).scalar_one() == "keep me"
    finally:
        engine.dispose()
