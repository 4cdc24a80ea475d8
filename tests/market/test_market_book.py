"""The book view, the indexes under it, and the audit that checks them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import crucible.core.market as market_api
from crucible.core.market import Tier
from crucible.core.market.index import BidIndex, Levels, RankIndex, price_band

from market_testlib import bid, gpu_host, granted, market, offer, req, usd


def test_book_view_shows_asks_minimums_standing_bids_clearing_prices_and_capacity() -> None:
    m = market(
        (gpu_host("a", n=4), offer(2.0, minimum=0.8)),
        (gpu_host("b", n=4), offer(2.5, minimum=0.9)),
        (gpu_host("c", n=4, region="us"), offer(2.0, minimum=0.7)),
    )
    granted(m.lease(req("x", count=2, lease_id="od"), 10))  # 2 on a (cheapest, smallest id)
    granted(m.lease(bid("y", 1.2, count=3, lease_id="i1"), 20))
    granted(m.lease(bid("z", None, count=1, lease_id="i2"), 30))
    view = m.book("H100", 40)
    placed = {x: m.get_lease(x).host_id for x in ("od", "i1", "i2")}
    assert placed == {"od": "a", "i1": "b", "i2": "c"}  # i1 ranks by reliability: all 1.0
    assert [(lvl.price, lvl.devices) for lvl in view.asks] == [(usd(2.0), 5), (usd(2.5), 1)]
    assert [(lvl.price, lvl.devices) for lvl in view.interruptible_minimums] == [
        (usd(0.7), 3),
        (usd(0.8), 2),
        (usd(0.9), 1),
    ]
    assert [(lvl.price, lvl.devices) for lvl in view.standing_bids] == [
        (usd(1.2), 3),
        (usd(0.7), 1),
    ]
    assert [(c.at_ms, c.tier, c.price, c.devices) for c in view.recent] == [
        (30, Tier.INTERRUPTIBLE, usd(0.7), 1),
        (20, Tier.INTERRUPTIBLE, usd(1.2), 3),
        (10, Tier.ON_DEMAND, usd(2.0), 2),
    ]
    assert (view.free_devices, view.listed_devices) == (6, 12)
    assert dict(view.leased) == {Tier.ON_DEMAND: 2, Tier.INTERRUPTIBLE: 4, Tier.RESERVED: 0}
    assert [lvl.price for lvl in m.book("H100", 40, depth=1).asks] == [usd(2.0)]
    with pytest.raises(ValueError):
        m.book("H100", 40, depth=0)


def test_book_excludes_draining_and_offline_hosts_and_unknown_types_are_empty() -> None:
    m = market((gpu_host("a", n=4), offer(2.0)), (gpu_host("b", n=4), offer(3.0)))
    m.set_draining("a", True)
    m.set_online("b", False, 0)
    view = m.book("H100", 0)
    assert view.asks == () and view.free_devices == view.listed_devices == 0
    empty = m.book("B200", 0)
    assert empty.asks == () and empty.recent == () and empty.free_devices == 0
    assert m.device_types() == ["H100"]


def test_clearing_history_is_bounded() -> None:
    from crucible.core.market import MarketRules

    m = market((gpu_host("a", n=8), offer(1.0)), rules=MarketRules(clearing_history=3))
    for i in range(6):
        granted(m.lease(req(lease_id=f"l{i}"), i))
    assert [c.at_ms for c in m.book("H100", 9).recent] == [5, 4, 3]


def test_rank_index_keeps_each_pool_in_the_lists_of_its_free_count() -> None:
    ix = RankIndex()
    ix.add((5, 0, "h1"), 0, 3)
    ix.add((4, 0, "h2"), 0, 1)
    assert ix.keys(1) == [(4, 0, "h2"), (5, 0, "h1")]
    assert ix.keys(3) == [(5, 0, "h1")] and ix.keys(4) == []
    ix.remove((5, 0, "h1"), 1, 3)  # h1 went from 3 free to 1
    assert ix.sizes() == [2, 0, 0]
    with pytest.raises(AssertionError, match="out of step"):
        ix.remove((5, 0, "h1"), 1, 2)
    with pytest.raises(ValueError):
        ix.at_least(0)


@settings(max_examples=300, deadline=None, database=None)
@given(a=st.integers(0, 10**12), b=st.integers(0, 10**12))
def test_price_bands_are_monotone_and_narrow(a: int, b: int) -> None:
    """A band below the bid's band holds only prices below the bid (what the banded index
    relies on), and a band spans at most about a fifth of its prices."""
    if price_band(a) < price_band(b):
        assert a < b
    if a <= b:
        assert price_band(a) <= price_band(b)
    if price_band(a) == price_band(b) and min(a, b) >= 8:
        assert max(a, b) <= min(a, b) * 5 // 4 + 1


def test_bid_index_orders_lowest_bid_then_newest() -> None:
    bids = BidIndex()
    bids.add(5, 100, "old")
    bids.add(5, 200, "new")
    bids.add(3, 0, "low")
    assert [e[2] for e in bids] == ["low", "new", "old"] and len(bids) == 3
    bids.remove(5, 200, "new")
    with pytest.raises(AssertionError):
        bids.remove(5, 200, "new")


def test_levels_track_their_maximum() -> None:
    levels = Levels()
    levels.add(3, 2)
    levels.add(7, 1)
    assert levels.max() == 7 and levels.total() == 3
    levels.add(7, -1)
    assert levels.max() == 3 and levels.items() == [(3, 2)]
    levels.add(3, -2)
    assert levels.max() is None
    with pytest.raises(AssertionError):
        levels.add(1, -1)


def test_the_audit_notices_a_corrupted_index() -> None:
    m = market((gpu_host("a", n=2), offer(2.0)))
    granted(m.lease(req(lease_id="l"), 0))
    assert m.audit() == []
    st = m._st  # reaching in on purpose: corrupt one derived structure
    st.pools[("a", "H100")].held.clear()
    problems = m.audit()
    assert any("held" in p or "lease set" in p for p in problems)


def test_the_public_names_resolve() -> None:
    for name in market_api.__all__:
        assert getattr(market_api, name) is not None
    assert len(set(market_api.__all__)) == len(market_api.__all__)
