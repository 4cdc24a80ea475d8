"""ServerState holds the process's settings, engine (and its read-only view), blob store,
secret and clock, and otherwise only parts: objects of a class that says who writes it, who
reads it and how stale it may be on other replicas (server/state.py). A plain dict, number
or string added to it is state with no owner; this test names the class to put it in
instead."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from functools import cached_property

import pytest

from crucible.errors import RateLimitedError
from crucible.protocol.accounts import Scope
from crucible.server.auth import Principal
from crucible.server.state import ServerState

from server_testlib import ServerUnderTest

# The process's own plain fields; anything else is a part. read_engine is the engine itself,
# seen through a write check (same pool, no state of its own).
_BASE = {"settings", "engine", "read_engine", "blobs", "secret", "clock"}
# Behaviour belongs to the part that owns the data (state.observations.observe_exec(...)).
_OWN_METHODS = {"_now_ms"}


def _parts() -> dict[str, object]:
    hints = typing.get_type_hints(ServerState)
    parts: dict[str, object] = {f.name: hints[f.name] for f in dataclasses.fields(ServerState)}
    for name, member in vars(ServerState).items():
        if isinstance(member, cached_property):
            parts[name] = typing.get_type_hints(member.func)["return"]
    return {name: t for name, t in parts.items() if name not in _BASE}


def test_server_state_holds_only_parts_beside_its_base_fields() -> None:
    parts = _parts()
    assert {"observations", "leader", "auth", "web", "limits"} <= parts.keys()
    for name, t in parts.items():
        plain = not inspect.isclass(t) or typing.get_origin(t) is not None
        assert not plain and t.__module__.startswith("crucible."), (
            f"ServerState.{name} is a plain {t!r}: put it in the part that owns it (a class "
            "whose docstring says who writes it, who reads it and how stale it may be on "
            "other replicas), not on ServerState"
        )
        doc = inspect.getdoc(t) or inspect.getdoc(inspect.getmodule(t))
        assert doc, f"ServerState.{name}'s class {t.__name__} says nothing of its owner"


def test_server_state_has_no_behaviour_of_its_own() -> None:
    methods = {
        name
        for name, member in vars(ServerState).items()
        if inspect.isfunction(member) and not name.startswith("__")
    }
    assert methods <= _OWN_METHODS, (
        f"ServerState has methods {sorted(methods - _OWN_METHODS)}: move them to the part "
        "whose data they use"
    )


def test_parts_read_the_clock_the_state_has_now(server: ServerUnderTest) -> None:
    """Tests replace ``state.clock`` after the state is made; the parts made from it (the
    rate limits, the observations) read the replacement, not the clock they were made with."""

    class At:
        def __init__(self, ms: int) -> None:
            self.ms = ms

        def now_ms(self) -> int:
            return self.ms

    state = server.state
    who = Principal("acct", Scope.USER.value, token_id="tok-1")
    limiter = state.limits.submit
    state.clock = At(0)
    for _ in range(limiter.burst):
        state.limits.take(limiter, who)
    with pytest.raises(RateLimitedError):
        state.limits.take(limiter, who)
    state.clock = At(3_600_000)  # an hour later the bucket is full again
    state.limits.take(limiter, who)
