"""@app.cls with real processes: one instance per container with its enter hook run once,
state kept across inputs, exit hooks at stop, and parameters selecting separate pools."""

from __future__ import annotations

from collections.abc import AsyncIterator
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


def test_the_default_parameters_given_or_not_are_one_pool(builder) -> None:
    with app_classes.app.run(client=builder) as running:
        first = app_classes.Counter().bump.remote()
        # The defaults spelled out: the same pool, so the same instance (its count kept).
        again = app_classes.Counter(start=0, marker_dir="").bump.remote()
        assert again[0] == 2 and again[1:] == first[1:]
        assert app_classes.Counter(marker_dir="").describe.remote() == "counter from 0"
        greeting, greeter = app_classes.Greeter(name="ada").hello.remote()
        assert greeting == "hello ada!"
        assert app_classes.Greeter(name="ada", punctuation="!").hello.remote()[1] == greeter
        # A generator method streams what it yields; .remote() says to use .remote_gen().
        assert list(app_classes.Greeter(name="ada").letters.remote_gen(upper=True)) == [
            "A",
            "D",
            "A",
        ]
        with pytest.raises(
            crucible.InvalidRequestError,
            match=r"Greeter\.letters is a generator: iterate over Greeter\(\)\.letters\.remote_gen",
        ):
            app_classes.Greeter(name="ada").letters.remote()
        with pytest.raises(crucible.InvalidRequestError, match="is a generator"):
            app_classes.Greeter(name="ada").letters.map([True])
        with pytest.raises(crucible.InvalidRequestError, match=r"hello is not a generator"):
            app_classes.Greeter(name="ada").hello.remote_gen()
        # Counter's default pool, Greeter(name="ada")'s, Broken's default pool, and
        # Greeter's class function (never called: the pools of the app's own containers are
        # made from it, as a deployment's).
        assert builder.get(f"/v1/apps/{running._app_id}")["functions"] == 4


def test_a_deployed_class_serves_any_parameters(exchange, tmp_path: Path) -> None:
    token = exchange.owner_token("deployer")
    builder = exchange.client(token)
    out = exchange.cli(token, tmp_path / "cli-home", "deploy", app_classes.__file__)
    assert out.returncode == 0, out.stderr
    # An app of classes only: the handle that calls them.
    assert "call it with crucible.Cls.from_name('classes', ...)" in out.stdout, out.stdout
    counter = crucible.Cls.from_name("classes", "Counter", client=builder)
    first = counter().bump.remote()
    assert counter(start=0).bump.remote()[1:] == first[1:]  # the default pool
    assert counter(start=100).bump.remote(by=5)[0] == 105  # a pool made on demand
    assert counter(start=100).bump.remote()[0] == 106  # and found again
    greeter = crucible.Cls.from_name("classes", "Greeter", client=builder)
    assert greeter(name="bo", punctuation="?").hello.remote()[0] == "hello bo?"
    # A generator method of a deployed class streams too; its kind travels in the spec.
    assert list(greeter(name="bo").letters.remote_gen()) == ["b", "o"]
    with pytest.raises(crucible.InvalidRequestError, match=r"letters is a generator"):
        greeter(name="bo").letters.spawn()
    with pytest.raises(crucible.InvalidRequestError, match=r"unexpected parameter\(s\) 'size'"):
        counter(size=3)
    with pytest.raises(crucible.InvalidRequestError, match=r"missing required parameter.*'name'"):
        greeter()
    with pytest.raises(AttributeError, match=r"no @crucible\.method\(\) named 'reset'"):
        counter().reset  # noqa: B018
    # Another account sees no such deployment, and makes no pool on it.
    stranger = exchange.client(exchange.new_account("stranger"))
    try:
        with pytest.raises(crucible.NotFoundError, match="no deployment named 'classes'"):
            crucible.Cls.from_name("classes", "Counter", client=stranger)
        with pytest.raises(crucible.NotFoundError, match="no deployment named 'classes'"):
            stranger.class_pool("classes", "Counter", {"start": 5})
    finally:
        stranger.close()
        builder.close()


def test_class_misuse_is_refused_clearly(builder) -> None:
    async def stream(self: object) -> AsyncIterator[int]:
        yield 1

    with pytest.raises(crucible.InvalidRequestError, match=r"stream is an async def"):
        crucible.method()(stream)

    empty = type("Empty", (), {"__module__": __name__, "nothing": lambda self: None})
    with pytest.raises(crucible.InvalidRequestError, match=r"no @crucible\.method"):
        app_classes.app.cls()(empty)

    with pytest.raises(
        crucible.InvalidRequestError,
        match=r"Counter\(\) got unexpected parameter\(s\) 'size'; it takes start, marker_dir",
    ):
        app_classes.Counter(size=3)
    with pytest.raises(crucible.InvalidRequestError, match=r"missing required parameter.*'name'"):
        app_classes.Greeter(punctuation="?")
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
