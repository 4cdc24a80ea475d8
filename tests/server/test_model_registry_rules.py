"""The model registry's rules, in process on SQLite and PostgreSQL: an adapter's name follows
the engines' rule wherever it is registered (so every registered adapter is one the engine
loads), a redeploy keeps the prices and visibility it does not set, and ``MODEL:`` (an empty
adapter) names no model."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from test_api_fine_tunes import _job, _setup
from test_openai_api import ASGI, _deploy, _model, _openai_error

from crucible.inference.schemas import AdapterLoad
from crucible.protocol.models import AdapterCreate

from server_testlib import ServerUnderTest

REFUSED_NAMES = (".dot", "_under", "-dash", "a" * 65, "x:y", "..", "a/b")
ACCEPTED_NAMES = ("sql", "a" * 64, "v1.2_b-3", "9lives")


def _engine_loads(name: str) -> bool:
    try:
        AdapterLoad.model_validate({"name": name, "path": "/a"})
    except ValidationError:
        return False
    return True


def test_adapter_names_follow_the_engines_rule(server: ServerUnderTest) -> None:
    alice = server.tenant("alice").token
    _deploy(server, alice, "chat", ASGI)
    _model(server, alice)
    for name in REFUSED_NAMES:
        assert not _engine_loads(name), name
        r = server.request(
            "POST", "/v1/models/chat/adapters", token=alice, json={"name": name, "path": "/a"}
        )
        assert r.status_code == 400, (name, r.text)
        message = r.json()["error"]["message"]
        assert "name" in message, message
        if len(name) <= 64 and ":" not in name:
            assert "starting with a letter or digit" in message, message
    for name in ACCEPTED_NAMES:
        assert _engine_loads(name), name
        server.ok(
            "POST", "/v1/models/chat/adapters", token=alice, json={"name": name, "path": "/a"}
        )
    listed = server.ok("GET", "/v1/models/chat", token=alice)["adapters"]
    assert sorted(a["name"] for a in listed) == sorted(ACCEPTED_NAMES)


def test_one_rule_for_registry_and_engine() -> None:
    for name in (*REFUSED_NAMES, *ACCEPTED_NAMES, "A", "a.", "a..b", "Z" * 64 + "z", "é"):
        try:
            AdapterCreate.model_validate({"name": name, "path": "/a"})
            registered = True
        except ValidationError:
            registered = False
        assert registered == _engine_loads(name), name


def test_a_fine_tune_adapter_name_follows_the_engines_rule(server: ServerUnderTest) -> None:
    alice, call_id, _ = _setup(server)
    for name in (".hidden", "a" * 100):
        r = server.request("POST", "/v1/fine-tunes", token=alice, json=_job(call_id, adapter=name))
        assert r.status_code == 400, (name, r.text)
        assert "adapter" in r.json()["error"]["message"]
    assert server.ok("GET", "/v1/fine-tunes", token=alice) == []


def _prices(info: dict[str, Any]) -> tuple[Any, Any, Any]:
    return info["price_input_micros"], info["price_output_micros"], info["public"]


def test_a_redeploy_keeps_prices_and_visibility_it_does_not_set(server: ServerUnderTest) -> None:
    alice = server.tenant("alice").token
    _deploy(server, alice, "chat", ASGI)
    first = _model(
        server, alice, public=True, price_input_micros=100_000, price_output_micros=200_000
    )
    assert _prices(first) == (100_000, 200_000, True)
    # A redeploy that says nothing of prices or visibility (new weights, say) keeps them.
    again = _model(server, alice, weights="new", context_length=4096)
    assert _prices(again) == (100_000, 200_000, True)
    assert again["weights"] == "new" and again["context_length"] == 4096
    # Setting one changes that one only; null removes a price; false makes it private.
    assert _prices(_model(server, alice, price_output_micros=300_000)) == (100_000, 300_000, True)
    assert _prices(_model(server, alice, price_input_micros=None)) == (None, 300_000, True)
    assert _prices(_model(server, alice, public=False)) == (None, 300_000, False)
    # A new model: private, no prices.
    _deploy(server, alice, "other", ASGI)
    fresh = server.ok("POST", "/v1/models", token=alice, json={"name": "o", "deployment": "other"})
    assert _prices(fresh) == (None, None, False)


@pytest.mark.parametrize("caller", ["alice", "bob"])
def test_an_empty_adapter_names_no_model(server: ServerUnderTest, caller: str) -> None:
    alice = server.tenant("alice").token
    bob = server.tenant("bob").token
    _deploy(server, alice, "chat", ASGI)
    _model(server, alice, public=True)
    token, model = (alice, "chat:") if caller == "alice" else (bob, "alice/chat:")
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    r = server.request("POST", "/openai/v1/chat/completions", token=token, json=chat)
    err = _openai_error(r, 404)
    assert err["code"] == "model_not_found" and model in err["message"]
    r = server.request("GET", f"/openai/v1/models/{model}", token=token)
    assert _openai_error(r, 404)["code"] == "model_not_found"


def test_an_adapter_over_the_models_max_lora_rank_is_refused(server: ServerUnderTest) -> None:
    """The model records its engine's --max-lora-rank; an adapter whose rank is given and
    over it is refused at registration (every request naming it would be)."""
    alice = server.tenant("alice").token
    _deploy(server, alice, "chat", ASGI)
    assert _model(server, alice, engine="vllm")["max_lora_rank"] == 64  # the engines' default
    assert _model(server, alice, engine="vllm", max_lora_rank=128)["max_lora_rank"] == 128
    body = {"name": "big", "path": "/a", "rank": 256}
    r = server.request("POST", "/v1/models/chat/adapters", token=alice, json=body)
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "rank 256, over the largest rank model 'chat' serves (128)" in message
    assert "--max-lora-rank 256" in message
    server.ok("POST", "/v1/models/chat/adapters", token=alice, json={**body, "rank": 128})
    # A custom engine's limit is its own business: not checked.
    _model(server, alice, engine="custom")
    server.ok("POST", "/v1/models/chat/adapters", token=alice, json={**body, "name": "c"})


def test_an_adapter_is_not_called_as_its_model(server: ServerUnderTest) -> None:
    """``chat:chat`` was answered by the base model (engines are sent the adapter's bare
    name) and billed as the adapter: the name is refused wherever an adapter is named."""
    alice = server.tenant("alice").token
    _deploy(server, alice, "chat", ASGI)
    _model(server, alice)
    r = server.request(
        "POST", "/v1/models/chat/adapters", token=alice, json={"name": "chat", "path": "/a"}
    )
    assert r.status_code == 400 and "cannot be called 'chat' too" in r.text, r.text
    assert server.ok("GET", "/v1/models/chat", token=alice)["adapters"] == []


def test_a_fine_tune_adapter_is_not_called_as_its_model(server: ServerUnderTest) -> None:
    alice, call_id, _ = _setup(server)
    r = server.request("POST", "/v1/fine-tunes", token=alice, json=_job(call_id, adapter="chat"))
    assert r.status_code == 400 and "cannot be called 'chat' too" in r.text, r.text
    assert server.ok("GET", "/v1/fine-tunes", token=alice) == []
