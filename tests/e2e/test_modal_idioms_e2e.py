"""What Modal code does that ports as is: ``map(order_outputs=False)``, ``for_each``,
``spawn_map``, the ``.aio`` forms, ``is_local()`` and ``current_function_call_id()``,
Modal's older option names refused with the new one (modal2 probe F8), against a real
exchange and real workers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import crucible

import app_basic


def test_map_yields_as_calls_finish_with_order_outputs_false(builder: Any, tmp_path: Path) -> None:
    with app_basic.app.run(client=builder):
        got = list(app_basic.rendezvous.map([0, 1], [str(tmp_path)] * 2, order_outputs=False))
        assert got == [1, 0]  # input 0 cannot finish before input 1 has run
        (tmp_path / "one-ran").unlink()
        ordered = list(app_basic.rendezvous.map([0, 1], [str(tmp_path)] * 2))
        assert ordered == [0, 1]
        # Unordered, failures come back in place of their results as in order.
        out = list(
            app_basic.fails_on_odd.map(range(6), return_exceptions=True, order_outputs=False)
        )
        assert len(out) == 6
        assert sorted(x for x in out if isinstance(x, int)) == [0, 2, 4]
        assert sum(isinstance(x, Exception) for x in out) == 3


def test_for_each_and_spawn_map(builder: Any) -> None:
    with app_basic.app.run(client=builder):
        assert app_basic.square.for_each(range(5)) is None
        with pytest.raises(Exception, match="odd"):
            app_basic.fails_on_odd.for_each(range(4))
        assert app_basic.fails_on_odd.for_each(range(4), ignore_exceptions=True) is None
        calls = app_basic.square.spawn_map(range(4))
        assert [c.get(timeout=60) for c in calls] == [0, 1, 4, 9]
        assert app_basic.add.spawn_map([1, 2], [10, 20], kwargs={"c": 100})[1].get(60) == 122
        with pytest.raises(crucible.InvalidRequestError, match="at least one iterable"):
            app_basic.square.spawn_map()


def test_the_aio_forms_from_an_event_loop(builder: Any) -> None:
    async def main() -> dict[str, Any]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        beat = asyncio.create_task(ticker())
        out: dict[str, Any] = {}
        out["remote"] = await app_basic.square.remote.aio(7)
        call = await app_basic.square.spawn.aio(8)
        out["get"] = await call.get.aio(timeout=60)
        out["map"] = [r async for r in app_basic.square.map.aio(range(4))]
        out["starmap"] = [r async for r in app_basic.add.starmap.aio([(1, 2), (3, 4)])]
        out["gen"] = [r async for r in app_basic.count_up.remote_gen.aio(3)]
        await app_basic.square.for_each.aio(range(3))
        spawned = await app_basic.square.spawn_map.aio([5])
        out["spawn_map"] = spawned[0].get(timeout=60)
        with pytest.raises(app_basic.CustomError, match="bad input 1"):
            await app_basic.boom.remote.aio(1)
        # Leaving an async for early stops the generator call, as a sync break does.
        async for item in app_basic.count_up.remote_gen.aio(1000):
            assert item == 0
            break
        beat.cancel()
        out["ticks"] = ticks
        return out

    with app_basic.app.run(client=builder):
        out = asyncio.run(main())
    assert out["remote"] == 49 and out["get"] == 64 and out["spawn_map"] == 25
    assert out["map"] == [0, 1, 4, 9] and out["starmap"] == [3, 7] and out["gen"] == [0, 1, 2]
    assert out["ticks"] > 0  # the loop went on while the calls waited


def test_is_local_and_the_current_call_id(builder: Any) -> None:
    assert crucible.is_local() is True and crucible.current_function_call_id() is None
    with app_basic.app.run(client=builder):
        call = app_basic.where_am_i.spawn()
        local, call_id = call.get(timeout=60)
    assert local is False
    assert call_id == call.object_id


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("keep_warm", "min_containers"),
        ("concurrency_limit", "max_containers"),
        ("container_idle_timeout", "scaledown_window"),
        ("allow_concurrent_inputs", "crucible.concurrent"),
    ],
)
def test_modals_older_option_names_say_the_new_one(old: str, new: str) -> None:
    app = crucible.App("renamed")
    with pytest.raises(crucible.InvalidRequestError, match=rf"{old}=2: .*{new}"):
        app.function(**{old: 2})
    with pytest.raises(crucible.InvalidRequestError, match=rf"{old}=2: .*{new}"):
        app.cls(**{old: 2})


def test_debian_slim_is_the_usual_first_step() -> None:
    assert crucible.Image.debian_slim() == crucible.Image()
    assert crucible.Image.debian_slim("3.12") == crucible.Image.from_registry("python:3.12-slim")
    with pytest.raises(crucible.InvalidRequestError, match="python_version must look like"):
        crucible.Image.debian_slim("latest")


def test_a_class_methods_have_the_same_forms(builder: Any) -> None:
    import app_classes

    greeter = app_classes.Greeter(name="ada")

    async def main() -> tuple[Any, list[str], list[str]]:
        said = await greeter.hello.remote.aio()
        letters = [x async for x in greeter.letters.remote_gen.aio(upper=True)]
        mapped = [x async for x in greeter.letters.remote_gen.aio()]
        return said, letters, mapped

    with app_classes.app.run(client=builder):
        said, upper, lower = asyncio.run(main())
        assert said[0].startswith("hello ada") and upper == list("ADA") and lower == list("ada")
        counter = app_classes.Counter(start=10)
        got = sorted(r[0] for r in counter.bump.map([1, 2, 3], order_outputs=False))
        assert len(got) == 3
        assert counter.bump.for_each([1, 1]) is None
        calls = counter.bump.spawn_map([5])
        assert len(calls) == 1 and calls[0].get(timeout=60)[0] > 10


def test_run_targets_a_class_method(builder: Any) -> None:
    """`crucible run FILE::Counter.bump --by 5`: the default instance's method, called once."""
    from crucible.cli.run import _find_entrypoint, _kwargs, call_entrypoint

    import app_classes

    entry = _find_entrypoint(app_classes, "Counter.bump")
    with app_classes.app.run(client=builder):
        value, _, _ = call_entrypoint(entry, _kwargs(entry, ["--by=5"]))
    assert value == 5
    with pytest.raises(crucible.InvalidRequestError, match="uses the class's default parameters"):
        _find_entrypoint(app_classes, "Greeter.hello")  # a required parameter: said at once
