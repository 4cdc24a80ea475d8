"""`crucible server` on a new store says in one line that it created the schema, instead of
Alembic's INFO line per migration (dozens, on every foreground `crucible up`)."""

from __future__ import annotations

from pathlib import Path

from harness import server_output


def _start_and_stop(home: Path) -> str:
    return server_output(home, "Crucible control plane on")


def test_a_new_store_is_announced_in_one_line(tmp_path: Path) -> None:
    out = _start_and_stop(tmp_path / "home")
    assert "Crucible control plane on" in out, out
    assert "Running upgrade" not in out and "Context impl" not in out, out
    created = [line for line in out.splitlines() if "store schema created" in line]
    assert len(created) == 1, out
    # The second start has nothing to migrate and says nothing about it.
    again = _start_and_stop(tmp_path / "home")
    assert "Crucible control plane on" in again and "store schema" not in again, again


def test_a_new_sqlite_store_is_its_owners_alone(tmp_path: Path) -> None:
    """It holds every tenant's calls, logs and the ledger; it was created world-readable."""
    import stat

    from crucible.server.store.db import create_store_engine, migrate

    engine = create_store_engine(f"sqlite:///{tmp_path / 'store' / 'crucible.db'}")
    try:
        migrate(engine)
    finally:
        engine.dispose()
    files = sorted((tmp_path / "store").iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files), [
        (f.name, oct(f.stat().st_mode)) for f in files
    ]
