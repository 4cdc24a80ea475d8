"""Calls end to end: SDK → control plane → agent → worker process → back."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import pytest

import crucible

import app_basic
import app_classes
from harness import wait_for


def test_remote_map_starmap_spawn(builder) -> None:
    with app_basic.app.run(client=builder):
        assert app_basic.square.remote(7) == 49
        assert list(app_basic.square.map(range(500))) == [x * x for x in range(500)]
        assert list(app_basic.add.starmap([(1, 2), (3, 4)], kwargs={"c": 10})) == [13, 17]
        assert list(app_basic.add.map([1, 2], [10, 20])) == [11, 22]
        call = app_basic.square.spawn(12)
        assert call.get(timeout=30) == 144
        assert crucible.FunctionCall.from_id(call.object_id, builder).get() == 144
        assert app_basic.uses_helper.remote(5) == 15  # a local module shipped as source
        assert app_basic.async_double.remote(21) == 42
        assert app_basic.square.local(3) == 9


def test_exception_reaches_caller_with_remote_traceback(builder) -> None:
    with app_basic.app.run(client=builder):
        with pytest.raises(app_basic.CustomError, match="bad input 3") as info:
            app_basic.boom.remote(3)
        notes = "\n".join(getattr(info.value, "__notes__", []))
        assert "Remote traceback" in notes and "in boom" in notes
        # The traceback starts at the builder's code: the worker's own frames above it
        # (crucible/worker/...) told the builder nothing.
        remote = notes.split("Remote traceback:", 1)[1]
        assert "crucible/worker" not in remote and "crucible/sdk" not in remote, remote
        assert remote.lstrip().startswith("Traceback (most recent call last):")

        results = list(app_basic.fails_on_odd.map(range(6), return_exceptions=True))
        assert results[0::2] == [0, 2, 4]
        assert all(isinstance(r, ValueError) for r in results[1::2])
        with pytest.raises(ValueError, match="1 is odd"):
            list(app_basic.fails_on_odd.map(range(6)))
        # sys.exit() in the function is its own affair: raised here as SystemExit it ended
        # the caller's process without a word.
        with pytest.raises(crucible.RemoteError, match=r"the function called sys.exit\(2\)"):
            app_basic.quits.remote(2)
        (quit_error,) = app_basic.quits.map([3], return_exceptions=True)
        assert isinstance(quit_error, crucible.RemoteError) and "SystemExit" in quit_error.exc_type


def test_a_map_draws_its_inputs_no_faster_than_its_results_are_taken(
    builder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `break` out of a map over an endless generator left 50,000 calls made in 10 s:
    submission stays a bounded distance ahead of the results taken, and stops when the
    caller leaves."""
    import itertools

    from crucible.sdk import _functions

    monkeypatch.setattr(_functions, "_MAX_AHEAD", 40)
    with app_basic.app.run(client=builder):
        for i, value in enumerate(app_basic.square.map(itertools.count())):
            assert value == i * i
            if i == 4:
                break
        fid = app_basic.square._function_id

        def made() -> int:
            return len(builder.get(f"/v1/calls?function_id={fid}&limit=1000")["calls"])

        time.sleep(2)
        count = made()
        assert 5 <= count <= 45, count
        time.sleep(1)
        assert made() == count  # nothing more was submitted after the break


def test_large_payloads_travel_as_blobs(builder) -> None:
    three_mib = 3 * 1024 * 1024
    with app_basic.app.run(client=builder):
        assert len(app_basic.make_bytes.remote(three_mib)) == three_mib
        assert app_basic.length.remote(b"y" * three_mib) == three_mib


def test_control_plane_stores_payloads_opaquely(exchange, builder) -> None:
    """The server keeps arguments as the SDK's bytes; it has no reason to unpickle them."""
    with app_basic.app.run(client=builder):
        call = app_basic.square.spawn(6)
        assert call.get(timeout=30) == 36
        info = builder.get_call(call.object_id)
    assert info.result is not None
    assert pickle.loads(info.result.raw()) == 36  # bytes made by the worker, passed through


def test_function_that_never_returns_times_out(builder) -> None:
    with app_basic.app.run(client=builder):
        with pytest.raises(crucible.FunctionTimeoutError):
            app_basic.sleepy.remote(30)
        assert app_basic.sleepy.remote(0.01) == 0.01  # the container still serves


def test_retries_with_backoff(builder, tmp_path: Path) -> None:
    with app_basic.app.run(client=builder):
        assert app_basic.flaky.remote(str(tmp_path / "a"), 2) == 3
        with pytest.raises(RuntimeError, match="failure 3"):
            app_basic.flaky.remote(str(tmp_path / "b"), 5)
        attempts = builder.list_calls(state="failed", limit=5)
        assert attempts[0].attempts == 3


def test_worker_killed_with_sigkill_is_retried(builder, tmp_path: Path) -> None:
    with app_basic.app.run(client=builder):
        assert app_basic.dies_once.remote(str(tmp_path / "marker")) == "survived"
    assert (tmp_path / "marker").read_text() == "died"


def test_cancel_queued_and_running_calls(builder) -> None:
    with app_basic.app.run(client=builder):
        running = app_basic.nap.spawn(20)
        import time

        deadline = time.monotonic() + 30
        while builder.get_call(running.object_id).state != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        running.cancel()
        with pytest.raises(crucible.CallCancelledError):
            running.get(timeout=10)
        # The exchange keeps serving after a cancelled call stopped its container.
        assert app_basic.square.remote(4) == 16


def test_get_timeout_raises_builtin_timeout(builder) -> None:
    with app_basic.app.run(client=builder):
        call = app_basic.nap.spawn(5)
        with pytest.raises(TimeoutError):
            call.get(timeout=0.2)
        call.cancel()


def test_remote_outside_a_running_app_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(crucible.Error, match=r"app\.run"):
        app_basic.square.remote(1)
    # The refusal names the method called (a class's handle said .remote() for any).
    with pytest.raises(crucible.Error, match=r"Greeter\(\)\.letters\.remote_gen\(\) needs a run"):
        list(app_classes.Greeter(name="ada").letters.remote_gen())
    # Inside a function's container `with app.run()` is no advice. The container calls the
    # functions of its own app (the app whose function its worker loaded: test_nested_calls_e2e);
    # any other app's are refused, saying why and what to do instead.
    monkeypatch.setenv("CRUCIBLE_CONTAINER_ID", "ct-x")
    with pytest.raises(crucible.Error, match=r"square\.remote\(\) inside a function's") as caught:
        app_basic.square.remote(1)
    message = str(caught.value)
    assert "app.run" not in message and "its own app" in message and "crucible.Queue" in message
    with pytest.raises(crucible.Error, match=r"square\.spawn\(\) inside a function's"):
        app_basic.square.spawn(1)
    with pytest.raises(crucible.Error, match=r"Greeter\(\)\.letters\.remote_gen\(\) inside"):
        list(app_classes.Greeter(name="ada").letters.remote_gen())
    with pytest.raises(crucible.Error, match=r"Counter\(\)\.bump\.map\(\) inside"):
        list(app_classes.Counter().bump.map([1]))
    # The container's own connection: app.run(), deploy() and a lookup by name say what is
    # wrong (the server's answer was "create a token with `crucible token create`").
    monkeypatch.setenv("CRUCIBLE_CONTAINER_TOKEN", "cru_container")
    monkeypatch.setenv("CRUCIBLE_SERVER_URL", "http://127.0.0.1:9")
    for env in [k for k in os.environ if k.startswith("CRUCIBLE_") and "CONTAINER" not in k]:
        if env != "CRUCIBLE_SERVER_URL":
            monkeypatch.delenv(env)
    monkeypatch.setenv("CRUCIBLE_HOME", "/nonexistent-crucible-home")
    guard = pytest.raises(crucible.Error, match=r'under `if __name__ == "__main__":`')
    with guard, app_basic.app.run():
        pass
    with pytest.raises(crucible.Error, match=r"app\.deploy\(\) inside a function's container"):
        app_basic.app.deploy()
    for look_up in (crucible.Function.from_name, crucible.Cls.from_name):
        with pytest.raises(crucible.Error, match="calls only the functions of its own app") as got:
            look_up("svc", "f")
        assert f"{look_up.__qualname__}('svc', 'f')" in str(got.value)
        assert "token create" not in str(got.value)


def test_worker_cannot_see_agent_token(builder) -> None:
    with app_basic.app.run(client=builder):
        assert app_basic.secrets_visible.remote() == {}


def test_a_calls_timeline_shows_its_phases_and_their_cost(builder) -> None:
    with app_basic.app.run(client=builder):
        cold = app_basic.square.spawn(3)
        assert cold.get(timeout=60) == 9
        warm = app_basic.square.spawn(4)
        assert warm.get(timeout=60) == 16
    t = builder.get(f"/v1/calls/{cold.object_id}/timeline")
    assert t["cold_start"] is True and t["state"] == "succeeded"
    names = [p["phase"] for p in t["phases"]]
    assert names[:3] == ["queued", "scheduled", "starting"] and names[-1] == "running"
    for p in t["phases"]:
        assert p["end_ms"] - p["start_ms"] == p["ms"] >= 0
        # Container time is billed from its start; the queue is not.
        billed = p["phase"] in ("starting", "waiting", "running")
        assert (p["cost_micros"] is not None) == billed
    w = builder.get(f"/v1/calls/{warm.object_id}/timeline")
    assert w["cold_start"] is False and [p["phase"] for p in w["phases"]] == ["queued", "running"]
    assert w["container_id"] == t["container_id"]
    with pytest.raises(crucible.NotFoundError):
        builder.get("/v1/calls/ca-nope/timeline")


def test_what_a_function_prints_is_stored_per_call_and_followed(builder) -> None:
    with app_basic.app.run(client=builder):
        first = app_basic.chatty.spawn(3)
        second = app_basic.chatty.spawn(2)
        assert first.get(timeout=60) == 3 and second.get(timeout=60) == 2
        app_id = builder.get(f"/v1/calls/{first.object_id}")["app_id"]

        def lines_of(call_id: str) -> list[tuple[str, str]]:
            page = builder.get(f"/v1/apps/{app_id}/logs?call_id={call_id}&wait_s=10")
            return [(x["stream"], x["line"]) for x in page["lines"]]

        wait_for(lambda: len(lines_of(first.object_id)) == 4, 30, "first call's lines")
        assert lines_of(first.object_id) == [
            ("stdout", "line 0 of 3"),
            ("stdout", "line 1 of 3"),
            ("stdout", "line 2 of 3"),
            ("stderr", "a warning"),
        ]
        wait_for(lambda: len(lines_of(second.object_id)) == 3, 30, "second call's lines")
        everything = builder.get(f"/v1/apps/{app_id}/logs")
        assert len(everything["lines"]) == 7
        # Following: nothing new yet, so the read waits and comes back empty.
        after = everything["next_after"]
        empty = builder.get(f"/v1/apps/{app_id}/logs?after={after}&wait_s=0.3")
        assert empty["lines"] == [] and empty["next_after"] == after
    with pytest.raises(crucible.NotFoundError):
        builder.get("/v1/apps/ap-not-mine/logs")


def test_what_subprocesses_print_is_stored_with_the_call(builder) -> None:
    # A subprocess's output (a trainer's traceback, a shell command's) was never shipped:
    # only Python's sys.stdout and sys.stderr were.
    with app_basic.app.run(client=builder):
        call = app_basic.chatty_children.spawn()
        assert call.get(timeout=60) == 0
        app_id = builder.get(f"/v1/calls/{call.object_id}")["app_id"]
        want = {
            ("stdout", "from python"),
            ("stdout", "child-out"),
            ("stderr", "child-err"),
            ("stdout", "given-stdout"),
            ("stdout", "raw-fd-one"),
        }

        def lines() -> set[tuple[str, str]]:
            page = builder.get(f"/v1/apps/{app_id}/logs?call_id={call.object_id}&wait_s=5")
            return {(x["stream"], x["line"]) for x in page["lines"]}

        wait_for(lambda: want <= lines(), 30, "every line, each with its call")


@pytest.mark.parametrize("fn", ["overlap", "overlap_async"])
def test_concurrent_inputs_share_one_container(builder, fn: str) -> None:
    with app_basic.app.run(client=builder):
        runs = list(getattr(app_basic, fn).map([1.5] * 6))
    assert len({container for _, _, container in runs}) == 1  # max_containers=1
    # All six were in the container at the same moment: the latest start came before the
    # earliest end.
    assert max(start for start, _, _ in runs) < min(end for _, end, _ in runs)


def test_concurrent_goes_below_app_function() -> None:
    with pytest.raises(crucible.InvalidRequestError, match=r"below @app\.function"):
        crucible.concurrent(max_inputs=4)(app_basic.square)  # on top of @app.function

    with pytest.raises(crucible.InvalidRequestError, match="target_inputs=9 is above"):
        crucible.concurrent(max_inputs=4, target_inputs=9)


def test_batched_inputs_run_as_one_call(builder) -> None:
    with app_basic.app.run(client=builder):
        results = list(app_basic.double_batch.map(range(24)))
        assert [double for double, _ in results] == [x * 2 for x in range(24)]
        assert max(size for _, size in results) > 1  # gathered into batches
        assert all(size <= 8 for _, size in results)
        assert app_basic.double_batch.remote(5) == (10, 1)  # a lone call is a batch of one
        with pytest.raises(TypeError, match="one result per input"):
            app_basic.short_batch.remote(1)


def test_batched_options_are_checked() -> None:
    with pytest.raises(crucible.InvalidRequestError, match="max_batch_size must be >= 1"):
        crucible.batched(max_batch_size=0, wait_ms=10)

    def f(x: list[int]) -> list[int]:
        return x

    # Not both, in either order.
    for outer, inner in (
        (crucible.concurrent(max_inputs=2), crucible.batched(max_batch_size=2, wait_ms=1)),
        (crucible.batched(max_batch_size=2, wait_ms=1), crucible.concurrent(max_inputs=2)),
    ):
        g = type(f)(f.__code__, f.__globals__, "f")  # fresh: the markers are attributes
        with pytest.raises(crucible.InvalidRequestError, match=r"either @crucible\.batched"):
            outer(inner(g))
    with pytest.raises(crucible.InvalidRequestError, match=r"below @app\.function"):
        crucible.batched(max_batch_size=4, wait_ms=10)(app_basic.square)


def test_generators_stream_with_back_pressure(builder, tmp_path: Path) -> None:
    with app_basic.app.run(client=builder):
        # Streaming: the first item arrives while the function is still running.
        stream = app_basic.handshake.remote_gen(str(tmp_path))
        assert next(stream) == "first"
        (tmp_path / "go").touch()
        assert list(stream) == ["second"]

        # Back-pressure: a caller that stops reading holds the producer back.
        progress = tmp_path / "progress"
        numbers = app_basic.count_up.remote_gen(5000, progress=str(progress))
        assert next(numbers) == 0
        wait_for(progress.exists, 30, "the generator started")
        time.sleep(2)  # a free-running producer would be done by now
        assert int(progress.read_text()) < 1000
        assert list(numbers) == list(range(1, 5000))

        # Leaving the loop early cancels the call: the producer stops.
        early = app_basic.count_up.remote_gen(100_000, progress=str(progress))
        assert next(early) == 0
        early.close()
        fid = app_basic.count_up._function_id

        def newest_state() -> str:
            calls = builder.get(f"/v1/calls?function_id={fid}&limit=1")["calls"]
            return str(calls[0]["state"])

        wait_for(lambda: newest_state() == "cancelled", 30, "the call to be cancelled")

        # An error after some items: the items, then the error.
        got = []
        with pytest.raises(ValueError, match="stopped at 5"):
            for x in app_basic.count_up.remote_gen(10, fail_at=5):
                got.append(x)
        assert got == [0, 1, 2, 3, 4]
        with pytest.raises(crucible.InvalidRequestError, match="remote_gen"):
            app_basic.count_up.remote(3)
