"""@app.cls with real processes: one instance per container with its enter hook run once,
state kept across inputs, exit hooks at stop, and parameters selecting separate pools."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

import crucible
from crucible.server.store.tables import containers

import app_classes
from harness import wait_for


def test_a_class_keeps_one_instance_per_container(builder, tmp_path: Path) -> None:
    marker = str(tmp_path)
    with app_classes.app.run(client=builder):
        counter = app_classes.Counter(marker_dir=marker)
        first = counter.bump.remote()
        second = counter.bump.remote(by=10)
        assert first[0] == 1 and second[0] == 11  # the same instance, its state kept
        assert first[1] == second[1] and first[2] == second[2]  # enter ran once
        # Other parameters: another pool, its own instance.
        other = app_classes.Counter(start=100, marker_dir=marker).bump.remote()
        assert other[0] == 101 and other[1] != first[1]
        assert app_classes.Counter().describe.remote() == "counter from 0"
        five = app_classes.Counter(start=5)
        assert [x[0] for x in five.bump.map([1, 1, 1])] == [6, 7, 8]
        assert [x[0] for x in five.bump.starmap([(1,), (2,)])] == [9, 11]
        assert [x[0] for x in five.bump.map([1, 2], kwargs={"times": 10})] == [21, 41]
        assert [x[0] for x in five.bump.starmap([()], kwargs={"by": 1})] == [42]
    # The app stopped: the containers ran their exit hooks.
    wait_for(lambda: len(list(tmp_path.glob("exited-*"))) >= 2, 30, "exit hooks")
    assert (tmp_path / f"exited-{first[1]}").read_text() == "11"


def test_class_misuse_is_refused_clearly(builder) -> None:
    empty = type("Empty", (), {"__module__": __name__, "nothing": lambda self: None})
    with pytest.raises(crucible.InvalidRequestError, match=r"no @crucible\.method"):
        app_classes.app.cls()(empty)

    with pytest.raises(crucible.InvalidRequestError, match="unexpected keyword"):
        app_classes.Counter(size=3)
    with pytest.raises(AttributeError, match=r"no @crucible\.method\(\) named 'reset'"):
        app_classes.Counter().reset  # noqa: B018
    # A method called on the class itself says to make an instance first.
    with pytest.raises(AttributeError, match=r"Counter\(\)\.bump\.remote"):
        app_classes.Counter.bump  # noqa: B018
    with pytest.raises(crucible.InvalidRequestError, match="call_id must be a call's id"):
        crucible.FunctionCall.from_id("")
    with pytest.raises(crucible.Error, match="needs a running app"):
        app_classes.Counter().bump.remote()
    with pytest.raises(crucible.InvalidRequestError, match=r"Counter\.bump\.map\(\) needs"):
        app_classes.Counter().bump.map()
    with pytest.raises(crucible.InvalidRequestError, match="kwargs must be a dict"):
        app_classes.Counter().bump.starmap([(1,)], kwargs=[("by", 1)])  # type: ignore[arg-type]
    assert app_classes.Counter(start=2).bump.local() == (3, "local", pytest.approx(0, abs=1e12))


def test_a_failing_enter_hook_fails_calls_clearly_without_a_restart_storm(
    exchange, builder
) -> None:
    with app_classes.app.run(client=builder):
        calls = [app_classes.Broken().predict.spawn(i) for i in range(5)]
        for call in calls:
            with pytest.raises(RuntimeError, match=r"(?s)the weights are missing.*in load"):
                call.get(timeout=60)
    # Retried with backoff (twice), not restarted in a loop: a handful of containers.
    engine = create_engine(exchange.database_url)
    with engine.connect() as conn:
        started = conn.execute(select(func.count()).select_from(containers)).scalar()
    engine.dispose()
    assert 1 <= started <= 6
