"""What a function is (generator, batched, concurrent, class, web endpoint) travels with it:
the server's FunctionInfo says so, and a handle found with Function.from_name or
Cls.from_name calls it the way it must be called."""

from __future__ import annotations

from typing import Any

import app_kinds
import pytest

import crucible


def test_deployed_kinds_travel_to_handles_by_name(builder: Any) -> None:
    app_kinds.app.deploy(client=builder)
    kinds = {
        name: builder.get(f"/v1/deployments/kinds/functions/{name}")["kind"]
        for name in ("words", "lengths", "shout", "plain", "Counter", "hello")
    }
    assert kinds == {
        "words": "generator",
        "lengths": "batched",
        "shout": "concurrent",
        "plain": "function",
        "Counter": "class",
        "hello": "web_endpoint",
    }

    words = crucible.Function.from_name("kinds", "words", client=builder)
    assert words.kind == "generator" and words.is_generator
    assert list(words.remote_gen("a b c")) == ["a", "b", "c"]
    with pytest.raises(crucible.InvalidRequestError, match=r"words is a generator.*remote_gen"):
        words.remote("a b")  # never the item count
    with pytest.raises(crucible.InvalidRequestError, match="generator"):
        words.spawn("a b")

    lengths = crucible.Function.from_name("kinds", "lengths", client=builder)
    assert lengths.kind == "batched"
    assert list(lengths.map(["a", "bb", "ccc"])) == [1, 2, 3]
    with pytest.raises(crucible.InvalidRequestError, match="not a generator"):
        next(iter(lengths.remote_gen("x")))

    shout = crucible.Function.from_name("kinds", "shout", client=builder)
    assert shout.kind == "concurrent" and shout.remote("hi") == "HI"
    plain = crucible.Function.from_name("kinds", "plain", client=builder)
    assert plain.kind == "function" and plain.remote(1) == 2

    counter = crucible.Cls.from_name("kinds", "Counter", client=builder)
    assert counter().add.remote(5) == 5
    assert list(counter().add.map([1, 2])) == [1, 2]
    # Any parameters: their pool is made from the deployed class; the defaults, given or
    # not, are the default pool.
    assert counter(start=7).add.remote(1) == 71
    assert counter(start=0).add.remote(2) == 2
    as_function = crucible.Function.from_name("kinds", "Counter", client=builder)
    assert as_function.kind == "class"
    with pytest.raises(crucible.InvalidRequestError, match=r"Cls\.from_name"):
        as_function.remote(1)

    hello = crucible.Function.from_name("kinds", "hello", client=builder)
    assert hello.kind == "web_endpoint"
    with pytest.raises(crucible.InvalidRequestError, match=r"web endpoint.*HTTP"):
        hello.remote()
    with pytest.raises(crucible.InvalidRequestError, match=r"not an @app\.cls"):
        crucible.Cls.from_name("kinds", "plain", client=builder)


def test_kind_is_derived_not_trusted() -> None:
    from crucible.protocol.apps import FunctionInfo

    info = FunctionInfo.model_validate(
        {
            "id": "fn-1",
            "app_id": "ap-1",
            "created_ms": 1,
            "name": "g",
            "code": {"bundle": "0" * 64, "module": "m", "qualname": "g"},
            "is_generator": True,
            "kind": "function",
        }
    )
    assert info.kind == "generator"
