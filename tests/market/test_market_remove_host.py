"""Market.remove_host: a host leaves the book cleanly (indexes, levels, pools), can come back
with other devices, and is refused while leases run or reservations hold its devices."""

from __future__ import annotations

import pytest

from crucible.errors import ConflictError, NotFoundError

from market_testlib import HOUR, gpu_host, granted, market, offer, req, reserve_req, reserved


def test_a_removed_host_leaves_no_trace_and_comes_back_with_other_devices() -> None:
    m = market((gpu_host("h1", n=1), offer(2.0)), (gpu_host("h2", n=2), offer(3.0)))
    assert m.book("H100", 0).free_devices == 3
    m.remove_host("h1")
    assert m.audit() == []
    assert m.host_ids() == ["h2"]
    assert m.book("H100", 0).free_devices == 2
    with pytest.raises(NotFoundError):
        m.host("h1")
    # The cheapest host is gone: a lease goes to h2.
    assert granted(m.lease(req("a"), 0)).leases[0].host_id == "h2"

    m.add_host(gpu_host("h1", n=4))  # back, with four GPUs now
    m.set_offer("h1", "H100", offer(1.0))
    assert m.audit() == []
    assert m.book("H100", 0).free_devices == 5
    assert granted(m.lease(req("b", count=4), 0)).leases[0].host_id == "h1"


def test_removal_waits_for_leases_and_reservations() -> None:
    m = market((gpu_host("h1", n=2), offer(2.0)))
    [lease] = granted(m.lease(req("a"), 0)).leases
    assert m.hosts_busy() == {"h1"}
    with pytest.raises(ConflictError, match="running leases"):
        m.remove_host("h1")
    m.release(lease.lease_id, 1)
    assert m.hosts_busy() == set()

    reserved(m.reserve(reserve_req("r1", "b", 1, HOUR, 2 * HOUR), 2))
    with pytest.raises(ConflictError, match="reservations"):
        m.remove_host("h1")
    assert m.audit() == []
