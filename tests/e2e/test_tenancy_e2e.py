"""Tenancy end to end (real server, agents and workers): an agent on the ``process`` runtime
does not isolate fully, so it runs its owner's code and refuses every other account's, for
CPU work (the scheduler core) and GPU work (the market), with a reason that says so; the
host list and the market show each host's isolation."""

from __future__ import annotations

import pytest

import crucible

import app_basic
import app_market
from harness import Exchange


def test_a_strangers_call_is_not_placed_on_a_process_host_the_owners_is(
    exchange: Exchange,
) -> None:
    owner = exchange.client(exchange.owner_token("owner"))
    stranger = exchange.client(exchange.new_account("stranger"))
    try:
        [host] = exchange.hosts()
        assert host["isolated"] is False and host["isolation"]["runtime"] == "process"
        with (
            app_basic.app.run(client=stranger),
            pytest.raises(
                crucible.ResourcesUnsatisfiableError, match="no fully isolated host"
            ) as refused,
        ):
            app_basic.square.remote(3)
        assert "owner's code" in str(refused.value)
        assert exchange.host("host-a")["containers"] == 0  # nothing of the stranger started
        with app_basic.app.run(client=owner):
            assert app_basic.square.remote(3) == 9
        market = stranger.transport.get("/v1/market/hosts")
        assert [(h["isolated"], h["isolation"].split(":")[0]) for h in market] == [
            (False, "process")
        ]
    finally:
        owner.close()
        stranger.close()


def test_the_market_leases_a_process_hosts_gpus_to_its_owner_only(
    exchange: Exchange,
) -> None:
    exchange.start_agent("gpu-a", fake_gpus="1xH100")
    owner = exchange.client(exchange.owner_token("owner"))
    stranger = exchange.client(exchange.new_account("stranger"))
    try:
        quote = stranger.transport.post("/v1/market/quote", {"gpu": "H100"})
        assert quote["available"] is False and quote["refusal"] == "not_isolated"
        assert "no fully isolated host" in quote["message"]
        assert owner.transport.post("/v1/market/quote", {"gpu": "H100"})["available"] is True
        with (
            app_market.rush.run(client=stranger),
            pytest.raises(
                (crucible.MarketRefusedError, crucible.ResourcesUnsatisfiableError),
                match="no fully isolated host",
            ),
        ):
            app_market.urgent.remote()
        with app_market.rush.run(client=owner):
            assert app_market.urgent.remote()
    finally:
        owner.close()
        stranger.close()
