"""Faults and bad input, end to end with real processes: each must end in a clear state."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

import crucible
from crucible.server.store.tables import containers

import app_basic
import app_crashy
import app_enter_fails
from harness import Exchange, wait_for


def test_resources_no_host_can_ever_satisfy_fail_clearly(builder) -> None:
    with app_basic.app.run(client=builder):
        with pytest.raises(crucible.ResourcesUnsatisfiableError, match="cpu=512"):
            app_basic.too_big.remote()
        with pytest.raises(crucible.ResourcesUnsatisfiableError, match="H100"):
            app_basic.visible_gpus.remote()


def test_unknown_gpu_model_is_refused_at_decoration() -> None:
    app = crucible.App("bad-gpu")
    with pytest.raises(crucible.InvalidGpuError, match="unknown GPU model 'Z9000'"):
        app.function(gpu="Z9000")
    with pytest.raises(crucible.InvalidRequestError, match="forget parentheses"):

        @app.function  # type: ignore[arg-type]
        def f() -> None: ...


def test_fake_gpus_are_placed_with_fallback(exchange: Exchange, builder) -> None:
    exchange.start_agent("gpu-host", fake_gpus="4xH100,2xL4")
    with app_basic.app.run(client=builder):
        devices = app_basic.visible_gpus.remote()
        assert len(devices.split(",")) == 2  # H100:2 → two of the four H100 indices
        assert set(devices.split(",")) <= {"0", "1", "2", "3"}
        # B200 exists nowhere; the fallback L4 (indices 4, 5 on that host) is used.
        assert app_basic.fallback_gpu.remote() in {"4", "5"}


def test_agent_killed_mid_call_is_retried_on_another_host(exchange: Exchange, builder) -> None:
    exchange.start_agent("host-b")
    with app_basic.app.run(client=builder):
        call = app_basic.nap.spawn(3)
        wait_for(lambda: builder.get_call(call.object_id).state == "running", 30, "call running")
        victim = next(h["name"] for h in exchange.hosts() if h["containers"] > 0)
        exchange.kill_agent(victim)  # SIGKILL: its worker dies with it
        second_container = call.get(timeout=60)  # requeued after host loss
        info = builder.get_call(call.object_id)
        assert info.state == "succeeded" and info.attempts == 2
        assert exchange.host(victim)["state"] == "lost"
        survivor = next(iter(exchange.agents))
        assert survivor != victim and exchange.host(survivor)["state"] == "ready"
        assert second_container.startswith("ct-")
    # The timeline shows the lost attempt on the dead host, then the one that succeeded.
    tl = builder.get(f"/v1/calls/{call.object_id}/timeline")
    lost, done = tl["history"]
    assert (lost["attempt"], lost["outcome"]) == (1, "host_lost")
    assert lost["host_id"] == exchange.host(victim)["id"]
    assert lost["error"]["code"] == "container_exited" and lost["ended_ms"] is not None
    assert (done["attempt"], done["outcome"], done["container_id"]) == (
        2,
        "succeeded",
        second_container,
    )
    assert done["host_id"] == exchange.host(survivor)["id"]
    requeued = next(p for p in tl["phases"] if p["attempt"] == 2)
    assert requeued["start_ms"] == lost["ended_ms"] and "host was lost" in requeued["detail"]


def test_control_plane_restart_loses_no_accepted_call(exchange: Exchange, builder) -> None:
    with app_basic.app.run(client=builder):
        calls = [app_basic.nap.spawn(0.3) for _ in range(8)]
        queued = [app_basic.square.spawn(i) for i in range(20)]
        exchange.stop_server(kill=True)  # SIGKILL: no graceful shutdown
        exchange.start_server()
        for c in calls:
            assert c.get(timeout=60) is not None
        assert [c.get(timeout=60) for c in queued] == [i * i for i in range(20)]


def test_scale_to_zero_after_idle_window(tmp_path) -> None:
    ex = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", CRUCIBLE_SCALEDOWN_WINDOW_S="0.5")
    ex.start_server()
    try:
        ex.start_agent("host-a")
        client = ex.client(ex.owner_token())
        with app_basic.app.run(client=client):
            assert app_basic.square.remote(2) == 4
            assert ex.host("host-a")["containers"] == 1
            wait_for(lambda: ex.host("host-a")["containers"] == 0, 20, "scale to zero")
            assert app_basic.square.remote(3) == 9  # and back up from zero
        client.close()
    finally:
        ex.close()


def test_stopped_app_stops_containers_and_bills_them(exchange: Exchange, builder) -> None:
    with app_basic.app.run(client=builder):
        assert app_basic.nap.remote(0.2)
    wait_for(lambda: exchange.host("host-a")["containers"] == 0, 20, "containers stopped")
    report = builder.get("/v1/bill")
    line = next(x for x in report["lines"] if x["function_name"] == "nap")
    assert line["containers"] == 1 and line["container_ms"] > 200
    assert line["cost_micros"] > 0 or line["container_ms"] < 1000
    assert line["calls"] == 1 and line["exec_ms"] >= 200


def test_tenants_cannot_see_each_other(exchange: Exchange, builder) -> None:
    other = exchange.client(exchange.new_account("other"))
    try:
        with app_basic.app.run(client=builder):
            call = app_basic.square.spawn(5)
            assert call.get(timeout=30) == 25
            with pytest.raises(crucible.NotFoundError):
                other.get_call(call.object_id)
            with pytest.raises(crucible.NotFoundError):
                other.cancel_call(call.object_id)
            assert other.list_calls() == []
            assert other.list_apps() == []
    finally:
        other.close()


def test_bad_token_is_refused(exchange: Exchange) -> None:
    bad = exchange.client("cru_not-a-real-token")
    try:
        with pytest.raises(crucible.AuthError):
            bad.list_apps()
    finally:
        bad.close()


def test_server_answers_client_mistakes_with_4xx(exchange: Exchange, builder) -> None:
    t = builder.transport
    status, body = t.request_raw("POST", "/v1/apps", b"{not json")
    assert status == 400 and b"invalid_request" in body
    status, body = t.request_raw("POST", "/v1/functions/fn-nope/calls", b'{"inputs": []}')
    assert status == 400
    status, body = t.request_raw(
        "POST", "/v1/functions/fn-nope/calls", b'{"inputs": [{"args": {"data": "AA=="}}]}'
    )
    assert status == 404 and b"not_found" in body
    big = b'{"name": "' + b"x" * (17 * 1024 * 1024) + b'"}'
    status, body = t.request_raw("POST", "/v1/apps", big)
    assert status == 413 and b"payload_too_large" in body
    time.sleep(0)  # the server is still healthy afterwards
    assert builder.list_apps() == []


def test_app_whose_client_vanished_is_stopped(tmp_path) -> None:
    ex = Exchange(
        tmp_path, f"sqlite:///{tmp_path / 'store.db'}", CRUCIBLE_APP_HEARTBEAT_TIMEOUT_S="3"
    )
    ex.start_server()
    try:
        client = ex.client(ex.owner_token())
        orphan = client.create_app("orphan")  # a client that never heartbeats
        time.sleep(2)
        with app_basic.app.run(client=client):  # created 2 s later: still fresh below
            wait_for(
                lambda: client.get(f"/v1/apps/{orphan.id}")["state"] == "stopped",
                20,
                "the abandoned app to stop",
            )
            live = client.get(f"/v1/apps/{app_basic.app.app_id}")
            assert live["state"] == "running"
        client.close()
    finally:
        ex.close()


def test_crash_looping_function_fails_clearly_after_backoff(tmp_path: Path) -> None:
    ex = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", CRUCIBLE_CRASH_LOOP_LIMIT="3")
    ex.start_server()
    try:
        ex.start_agent("host-a")
        client = ex.client(ex.owner_token())
        with (
            app_crashy.app.run(client=client),
            pytest.raises(crucible.ContainerExitedError, match=r"crash loop: 3 container"),
        ):
            app_crashy.never.remote()
        assert "is crash-looping" in ex.log("server")
        # Backed off, not restarted in a tight loop: three containers, one per crash.
        engine = create_engine(ex.database_url)
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(containers)).scalar() == 3
        engine.dispose()
        client.close()
    finally:
        ex.close()


def test_a_function_whose_enter_hook_fails_backs_off_like_a_crash_loop(tmp_path: Path) -> None:
    """Its containers fail what they are given with the hook's error and exit without ever
    becoming ready: each counts towards a crash loop (1 s, 2 s, 4 s ... between them), where a
    kept-warm class's were replaced at once (the probe saw about 20 containers a second)."""
    ex = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}")
    ex.start_server()
    try:
        ex.start_agent("host-a")
        client = ex.client(ex.owner_token())
        with app_enter_fails.app.run(client=client):
            with pytest.raises(RuntimeError, match="the weights are missing"):
                app_enter_fails.Broken().predict.remote(1)
            wait_for(lambda: "is crash-looping" in ex.log("server"), 30, "a crash loop")
            time.sleep(5)  # a tight loop would start dozens of containers meanwhile
        engine = create_engine(ex.database_url)
        with engine.connect() as conn:
            made = conn.execute(select(func.count()).select_from(containers)).scalar() or 0
            ready = conn.execute(
                select(func.count())
                .select_from(containers)
                .where(containers.c.ready_ms.isnot(None))
            ).scalar()
        engine.dispose()
        assert 2 <= made <= 6 and ready == 0, made
        client.close()
    finally:
        ex.close()


def test_a_crash_loop_fails_every_call_with_the_hooks_own_error(tmp_path: Path) -> None:
    """Calls still queued when an @enter hook's crash loop gives up fail with the hook's own
    exception, as the first calls did (modal2 F6: they got ContainerExitedError whose message
    showed the head of the worker's traceback and not the user's words)."""
    ex = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", CRUCIBLE_CRASH_LOOP_LIMIT="2")
    ex.start_server()
    try:
        ex.start_agent("host-a")
        client = ex.client(ex.owner_token())
        with app_enter_fails.app.run(client=client):
            broken = app_enter_fails.BrokenRetried()
            out = list(broken.predict.map(range(5), return_exceptions=True))
        assert len(out) == 5
        for err in out:
            assert isinstance(err, FileNotFoundError), repr(err)
            assert "weights.bin missing" in str(err), str(err)
        client.close()
    finally:
        ex.close()


def test_a_container_that_cannot_load_fails_one_call_not_the_queue(tmp_path: Path) -> None:
    """It took every queued call and failed them all at once, so a hook that fails once
    failed a whole .map (probe3 F9): it fails one and exits; the next container loads."""
    ex = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}")
    ex.start_server()
    try:
        ex.start_agent("host-a")
        client = ex.client(ex.owner_token())
        with app_enter_fails.app.run(client=client):
            model = app_enter_fails.FailsOnce(marker=str(tmp_path / "tried"))
            out = list(model.predict.map(range(6), return_exceptions=True))
        failed = [x for x in out if isinstance(x, Exception)]
        assert len(failed) == 1 and isinstance(failed[0], ConnectionError), out
        assert len([x for x in out if isinstance(x, int)]) == 5, out
        client.close()
    finally:
        ex.close()
