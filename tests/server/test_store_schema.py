"""The store: migrations from empty, idempotent re-runs, and durability of accepted work."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select

from crucible.server.services import calls as calls_svc
from crucible.server.store.db import alembic_config, create_store_engine, migrate
from crucible.server.store.tables import calls, metadata

from server_testlib import MakeServer, ServerUnderTest, World


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def test_migrations_build_the_schema_from_empty_and_rerun_harmlessly(database_url: str) -> None:
    engine = create_store_engine(database_url)
    try:
        assert set(inspect(engine).get_table_names()) == set()
        migrate(engine)
        tables = set(inspect(engine).get_table_names())
        assert tables == set(metadata.tables) | {"alembic_version"}
        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == _head()
            # The migrations build exactly what tables.py declares (columns, types, indexes,
            # constraints): nothing was added to one and forgotten in the other.
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []

        # Re-running on a migrated store (every server start does) changes nothing and keeps data.
        world = World.create(engine)
        fid = world.function()
        with engine.begin() as conn:
            ids = world.submit(conn, fid, 3)
        migrate(engine)
        migrate(engine)
        assert set(inspect(engine).get_table_names()) == tables
        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == _head()
            assert sorted(conn.execute(select(calls.c.id)).scalars()) == sorted(ids)
    finally:
        engine.dispose()


def test_accepted_calls_survive_a_restart(make_server: MakeServer, database_url: str) -> None:
    """Durable before acknowledged: a 201 means committed, whatever happens to the process."""
    server: ServerUnderTest = make_server()
    alice = server.tenant("alice")
    fn = server.new_function(alice.token, server.new_app(alice.token), server.put_blob(alice.token))
    accepted = server.new_calls(alice.token, fn, 25, group_id="batch")
    keyed = server.ok(
        "POST",
        f"/v1/functions/{fn}/calls",
        token=alice.token,
        json={"inputs": [{"args": {"data": "gAQ="}, "idempotency_key": "once"}]},
    )["call_ids"]
    # The process goes away: every pooled connection is closed without further ceremony.
    server.state.engine.dispose()

    engine = create_store_engine(database_url)
    try:
        migrate(engine)  # what the next server start does
        with engine.connect() as conn:
            rows = conn.execute(
                select(calls.c.id, calls.c.state, calls.c.idx, calls.c.input).where(
                    calls.c.function_id == fn
                )
            ).all()
            assert sorted(r.id for r in rows) == sorted(accepted + keyed)
            assert all(r.state == "queued" and r.input == b"\x80\x04" for r in rows)
            assert sorted(r.idx for r in rows if r.id in accepted) == list(range(25))
    finally:
        engine.dispose()

    # A fresh server on the same store answers for them, and honours the idempotency key.
    again: ServerUnderTest = make_server()
    token = again.tenant("alice").token
    assert again.ok("GET", f"/v1/calls/{accepted[-1]}", token=token)["state"] == "queued"
    repeat = again.ok(
        "POST",
        f"/v1/functions/{fn}/calls",
        token=token,
        json={"inputs": [{"args": {"data": "gAQ="}, "idempotency_key": "once"}]},
    )["call_ids"]
    assert repeat == keyed


def test_a_rolled_back_transaction_leaves_nothing(world: World) -> None:
    fid = world.function()
    try:
        with world.engine.begin() as conn:
            world.submit(conn, fid, 5)
            raise RuntimeError("the request failed before it answered")
    except RuntimeError:
        pass
    with world.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(calls)).scalar_one() == 0
        assert calls_svc.list_calls(conn, world.principal) == []
