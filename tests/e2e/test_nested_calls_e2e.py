"""A function calling other functions of its own app from inside its container (Modal's
function composition), with real processes: .remote, .spawn, .map, .remote_gen, a class's
pools (made on demand), FunctionCall.from_id, an async web endpoint awaiting .remote.aio;
and what a container cannot reach (another app, a deployment by name, a call it did not
make). The nested calls are the account's, billed like any."""

from __future__ import annotations

import app_nested
import httpx

from harness import Exchange


def test_a_function_calls_the_other_functions_of_its_app(builder) -> None:
    with app_nested.app.run(client=builder) as running:
        assert app_nested.compose.remote(4) == {
            "remote": 16,
            "spawned": 25,
            "again": 25,
            "map": [0, 1, 4, 9, 16],
            "gen": [0, 1, 2],
            "default_pool": 8,
            "other_pool": 40,
            "pool_map": [3, 6],
        }
        mine = app_nested.square.spawn(2)
        said = app_nested.refused.remote(mine.object_id)
        assert mine.get() == 4
        app_id = running.app_id
    assert said["other_app"].startswith("Error: stranger.remote() inside a function's"), said
    assert "its own app" in said["other_app"]
    assert said["from_name"].startswith("Error: Function.from_name('nested', 'square')"), said
    assert said["not_mine"].startswith("NotFoundError: call " + mine.object_id), said
    # The nested calls are the account's like any: listed, finished and costed.
    calls = builder.list_calls(app_id=app_id, limit=100)
    by_function: dict[str, int] = {}
    for call in calls:
        assert call.state == "succeeded" and call.cost_micros is not None, call
        by_function[call.function_id] = by_function.get(call.function_id, 0) + 1
    # compose and refused (the builder's), square: 1 + 1 + 5 nested and 1 of the builder's;
    # count's one stream; Scaler's three pools: 1 + 1 + 2.
    assert sorted(by_function.values()) == [1, 1, 1, 1, 1, 2, 8], by_function


def test_an_async_web_endpoint_awaits_another_function(exchange: Exchange) -> None:
    token = exchange.owner_token("web-nested")
    builder = exchange.client(token)
    try:
        app_nested.app.deploy(client=builder)
        with httpx.Client(timeout=120) as http:
            r = http.get(
                f"{exchange.url}/web/operator/nested/web_square/",
                params={"x": 7},
                headers={"authorization": f"Bearer {token}"},
            )
        assert r.status_code == 200, r.text
        assert r.json() == {"square": 49}
        builder.post("/v1/deployments/nested/stop")
    finally:
        builder.close()
