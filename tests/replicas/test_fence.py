"""The scheduler lease and its fencing epoch, on the real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, insert, select

from crucible.server.leadership import Deposed, claim, fence, others_alive
from crucible.server.store.db import create_store_engine, migrate
from crucible.server.store.tables import accounts, leadership

LEASE_MS = 5_000


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = create_store_engine(database_url)
    migrate(eng)
    yield eng
    eng.dispose()


def _claim(engine: Engine, holder: str, now_ms: int) -> int | None:
    with engine.begin() as conn:
        return claim(conn, holder, now_ms, LEASE_MS)


def _write_account(engine: Engine, epoch: int, name: str) -> None:
    """A scheduler-style write: fenced first, then a row."""
    with engine.begin() as conn:
        fence(conn, epoch)
        conn.execute(insert(accounts).values(id=name, name=name, created_ms=0))


def _account_names(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(accounts.c.name)).scalars())


def test_one_holder_at_a_time_and_each_takeover_bumps_the_epoch(engine: Engine) -> None:
    assert _claim(engine, "a", 1_000) == 1
    assert _claim(engine, "b", 2_000) is None  # a's lease is live
    assert _claim(engine, "a", 3_000) == 1  # renewal keeps the epoch
    assert _claim(engine, "b", 3_000 + LEASE_MS - 1) is None
    assert _claim(engine, "b", 3_000 + LEASE_MS + 1) == 2  # a lapsed: b takes over
    assert _claim(engine, "a", 3_000 + LEASE_MS + 2) is None  # and a does not get it back
    with engine.connect() as conn:
        row = conn.execute(select(leadership)).one()
    assert (row.epoch, row.holder) == (2, "b")


def test_a_deposed_leaders_write_is_refused_and_rolled_back(engine: Engine) -> None:
    old = _claim(engine, "a", 1_000)
    assert old == 1
    _write_account(engine, old, "before")
    new = _claim(engine, "b", 1_000 + LEASE_MS + 1)
    assert new == 2
    with pytest.raises(Deposed, match="epoch 1 no longer leads"):
        _write_account(engine, old, "after")
    _write_account(engine, new, "by-b")
    assert _account_names(engine) == {"before", "by-b"}


@pytest.mark.postgres
def test_a_takeover_waits_for_the_old_leaders_open_transaction(database_url: str) -> None:
    """The fence holds the lease row share-locked: the old leader's transaction that began
    before the takeover commits whole, and none after it does."""
    if not database_url.startswith("postgresql"):
        pytest.skip("row locks: PostgreSQL only (SQLite has one writer at a time)")
    eng = create_store_engine(database_url)
    migrate(eng)
    try:
        assert _claim(eng, "a", 1_000) == 1
        took: list[int | None] = []
        with eng.begin() as conn:
            fence(conn, 1)
            taker = threading.Thread(
                target=lambda: took.append(_claim(eng, "b", 1_000 + LEASE_MS + 1))
            )
            taker.start()
            taker.join(0.5)
            assert taker.is_alive(), "the takeover must wait for the fenced transaction"
            conn.execute(insert(accounts).values(id="in-flight", name="in-flight", created_ms=0))
        taker.join(10)
        assert took == [2]
        with pytest.raises(Deposed):
            _write_account(eng, 1, "late")
        assert _account_names(eng) == {"in-flight"}
    finally:
        eng.dispose()


def test_each_replica_counts_the_others_alive(engine: Engine) -> None:
    """The wake-up bus publishes only when another replica is alive."""
    with engine.begin() as conn:
        assert others_alive(conn, "a", "http://a", 1_000, LEASE_MS) == 0
    with engine.begin() as conn:
        assert others_alive(conn, "b", "", 2_000, LEASE_MS) == 1
    with engine.begin() as conn:
        assert others_alive(conn, "a", "http://a", 3_000, LEASE_MS) == 1
    with engine.begin() as conn:  # b stopped renewing: after the lease it no longer counts
        assert others_alive(conn, "a", "http://a", 2_000 + LEASE_MS + 1, LEASE_MS) == 0


@pytest.mark.postgres
def test_replicas_starting_together_migrate_one_after_another(database_url: str) -> None:
    """Several servers started at once on an empty store all come up (the schema upgrade
    takes turns) instead of racing to create the same tables."""
    if not database_url.startswith("postgresql"):
        pytest.skip("one process per SQLite store")
    engines = [create_store_engine(database_url) for _ in range(3)]
    errors: list[BaseException] = []

    def run(eng: Engine) -> None:
        try:
            migrate(eng)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert errors == []
        with engines[0].connect() as conn:
            assert conn.execute(select(leadership)).all() == []  # the newest table is there
    finally:
        for e in engines:
            e.dispose()
