"""Replicas of different versions on one store (a rolling upgrade): a function spec holding
a field this version does not know is read without it, and a spec it cannot read at all
stops nobody else's work and loses none of its blobs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select, update

from crucible.errors import InternalError
from crucible.protocol.accounts import Scope
from crucible.protocol.common import Resources, read_tolerant
from crucible.protocol.hosts import HostSyncReply
from crucible.server.scheduler.loop import SchedulerLoop
from crucible.server.services.function_specs import SPECS
from crucible.server.store.tables import containers, functions

from server_testlib import MakeServer


def test_read_tolerant_drops_only_unknown_fields() -> None:
    assert read_tolerant(Resources, {"cpu": 2.0, "from_the_future": 1}).cpu == 2.0
    nested = {"start": [], "stop": [], "heartbeat_interval_s": 1.0, "later": {"x": 1}}
    assert read_tolerant(HostSyncReply, nested).heartbeat_interval_s == 1.0
    with pytest.raises(ValidationError):  # a known field of the wrong type is still refused
        read_tolerant(Resources, {"cpu": "two", "from_the_future": 1})
    with pytest.raises(ValidationError):  # and a client's request stays strict
        Resources.model_validate({"cpu": 2.0, "from_the_future": 1})


def _set_spec(server, function_id: str, change: dict) -> None:  # type: ignore[no-untyped-def]
    with server.state.engine.begin() as conn:
        spec = conn.execute(
            select(functions.c.spec).where(functions.c.id == function_id)
        ).scalar_one()
        conn.execute(
            update(functions)
            .where(functions.c.id == function_id)
            .values(spec={**spec, **change}, spec_rev=functions.c.spec_rev + 1)
        )


def test_a_spec_from_a_newer_version_is_scheduled_and_a_broken_one_stops_nobody(
    make_server: MakeServer,
) -> None:
    server = make_server()
    SPECS.clear()
    token = server.tenant("alice").token
    server.register_host(server.tenant("alice", Scope.HOST).token, "box")
    bundle = server.put_blob(token)
    newer = server.new_function(token, server.new_app(token, "newer"), bundle)
    broken = server.new_function(
        token, server.new_app(token, "broken"), server.put_blob(token, b"x")
    )
    plain = server.new_function(token, server.new_app(token, "plain"), bundle)
    for fn in (newer, broken, plain):
        server.new_calls(token, fn)
    _set_spec(server, newer, {"zzz_future_field": 1})  # what a newer replica may store
    _set_spec(server, broken, {"max_containers": "lots"})  # no version reads this
    SchedulerLoop(server.state).tick()  # used to fail for everyone
    with server.state.engine.connect() as conn:
        placed = dict(
            conn.execute(
                select(containers.c.function_id, func.count()).group_by(containers.c.function_id)
            ).all()
        )
        assert placed.get(newer) == 1 and placed.get(plain) == 1 and broken not in placed
        assert SPECS.get(conn, newer) is not None
        rev = conn.execute(select(functions.c.spec_rev).where(functions.c.id == broken)).scalar()
        with pytest.raises(InternalError, match="cannot be read by this server's version"):
            SPECS.at(conn, broken, int(rev))
    # Retention keeps the unreadable spec's code bundle (it names it all the same).
    from crucible.server.services.retention import _referenced

    broken_bundle = server.put_blob(token, b"x")
    with server.state.engine.connect() as conn:
        assert broken_bundle in _referenced(conn, server.state.blobs, [broken_bundle])
