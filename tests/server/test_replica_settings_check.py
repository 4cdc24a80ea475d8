"""Replicas of one exchange must share the secret that signs container tokens and the key
that seals new secrets: a replica with other ones is found (and logged by the others) and a
server started with other ones is refused before it serves."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from crucible.cli.serve import _refuse_other_settings
from crucible.errors import SettingError
from crucible.server.leadership import (
    compatible,
    differing_replicas,
    others_alive,
    settings_check,
)
from crucible.server.secretbox import load_secret_box
from crucible.server.store.db import migrate
from crucible.settings import load_settings

LEASE_MS = 5_000


def test_a_replica_with_another_secret_is_found(database_url: str) -> None:
    engine = create_engine(database_url)
    migrate(engine)
    same, other = settings_check("s3cret", "key-a"), settings_check("another", "key-a")
    assert same != other and "s3cret" not in same  # a fingerprint, not the secret
    assert settings_check("s3cret", "key-b") != same  # the sealing key counts too
    with engine.begin() as conn:
        assert others_alive(conn, "r1", "", 1_000, LEASE_MS, same) == 0
        assert others_alive(conn, "r2", "", 1_000, LEASE_MS, same) == 1
        assert differing_replicas(conn, "r1", same, 1_000, LEASE_MS) == []
        others_alive(conn, "r3", "", 1_000, LEASE_MS, other)
        assert differing_replicas(conn, "r1", same, 1_000, LEASE_MS) == ["r3"]
        # Dead replicas do not count.
        assert differing_replicas(conn, "r1", same, 1_000 + LEASE_MS + 1, LEASE_MS) == []
    engine.dispose()


def test_a_server_with_other_settings_is_refused(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(postgres_url)
    migrate(engine)
    running = load_settings(home=str(tmp_path / "a"), database_url=postgres_url, secret="one")
    check = settings_check("one", load_secret_box(running).current)
    with engine.begin() as conn:
        others_alive(conn, "replica-a", "", _now(), LEASE_MS, check)
    _refuse_other_settings(engine, running)  # the same settings: fine
    newcomer = load_settings(home=str(tmp_path / "b"), database_url=postgres_url, secret="two")
    with pytest.raises(SettingError, match=r"\(replica-a, r-\w+\) have another CRUCIBLE_SECRET"):
        _refuse_other_settings(engine, newcomer)
    engine.dispose()


def test_two_servers_checking_in_at_once_with_other_settings_are_not_both_let_through(
    postgres_url: str, tmp_path: Path
) -> None:
    """Neither has a replica row of its own yet (each is between its check and its
    elector's first claim): the first one let through leaves a row the second one finds."""
    engine = create_engine(postgres_url)
    migrate(engine)
    first = load_settings(home=str(tmp_path / "a"), database_url=postgres_url, secret="one")
    second = load_settings(home=str(tmp_path / "b"), database_url=postgres_url, secret="two")
    _refuse_other_settings(engine, first)
    with pytest.raises(SettingError, match="have another CRUCIBLE_SECRET"):
        _refuse_other_settings(engine, second)
    _refuse_other_settings(engine, first)  # one more replica like the first: fine
    engine.dispose()


def _now() -> int:
    import time

    return time.time_ns() // 1_000_000


def test_the_elector_logs_replicas_that_differ(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from crucible.server.leadership import Elector

    engine = create_engine(database_url)
    migrate(engine)

    class Idle:
        running = False

        def start(self, epoch: int) -> None:
            pass

        async def stop(self) -> None:
            pass

    mine = Elector(engine, Idle(), lambda: 1_000, lease_s=5, renew_s=1, holder="r1", check="x:1")
    theirs = Elector(engine, Idle(), lambda: 1_000, lease_s=5, renew_s=1, holder="r2", check="y:1")
    theirs._claim()
    with caplog.at_level(logging.ERROR, logger="crucible.leadership"):
        mine._claim()
        mine._claim()  # logged once, not at every renewal
    errors = [r for r in caplog.records if "another CRUCIBLE_SECRET" in r.getMessage()]
    assert len(errors) == 1 and "r2" in errors[0].getMessage()
    assert mine.differing == ["r2"]
    engine.dispose()


def test_the_secrets_key_rotates_replica_by_replica() -> None:
    """A replica restarted with the new key first was refused while the others ran with the
    old one, so a rotation stopped every replica (ops2 probe). Each must open what the other
    seals: add the new key after the old everywhere, then put it first."""
    old, new = "old-key-fingerprint", "new-key-fingerprint"

    def replica(*keys: str) -> str:
        return settings_check("s3cret", keys[0], keys)

    before = replica(old)
    added = replica(old, new)  # step 1, one replica at a time: it still seals with the old
    first = replica(new, old)  # step 2, one replica at a time: every one opens the new
    assert compatible(before, added) and compatible(added, first)
    assert not compatible(before, first)  # the old one cannot open what the new seals
    assert not compatible(replica(old), settings_check("another", old, (old,)))
    # A replica of an older version (its check names no keys) opens its sealing key only.
    legacy = before.rsplit(":", 1)[0]
    assert compatible(legacy, added) and not compatible(legacy, first)
