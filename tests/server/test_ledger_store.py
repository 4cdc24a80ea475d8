"""The ledger in the store agrees with the pure ledger: random grants and metered charges,
retried ones included, leave the same balances in SQLite as in
:class:`~crucible.core.ledger.Ledger`, every entry balances and the whole ledger sums
to zero."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from crucible.core.ledger import (
    CREDITS_ISSUED,
    PLATFORM_FEES,
    Ledger,
    MeteredInterval,
    host_account,
    renter_account,
)
from crucible.server.billing.entries import (
    account_balance,
    charge_entry,
    check_ledger,
    grant_credits,
    post_entries,
)
from crucible.server.store.db import create_store_engine, migrate
from crucible.server.store.tables import accounts, ledger_entries

RENTERS = ["ac-a", "ac-b"]
HOSTS = ["ho-1", "ho-2"]
FEE_PPM = 123_457  # an awkward fee, so rounding is exercised

grant_op = st.tuples(st.just("grant"), st.sampled_from(RENTERS), st.integers(1, 10**9))
charge_op = st.tuples(
    st.just("charge"),
    st.sampled_from(RENTERS),
    st.sampled_from(HOSTS),
    st.sampled_from(["ct-1", "ct-2", "ct-3"]),
    st.integers(0, 5_000_000),  # cost of the interval
    st.booleans(),  # posted twice (a retried metering tick)
)


@settings(max_examples=25, deadline=None, database=None)
@given(ops=st.lists(st.one_of(grant_op, charge_op), min_size=1, max_size=40))
def test_store_ledger_matches_the_pure_ledger(ops: list[tuple[object, ...]]) -> None:
    engine = create_store_engine("sqlite://")
    migrate(engine)
    pure = Ledger(FEE_PPM)
    starts: dict[str, int] = {}
    with engine.begin() as conn:
        conn.execute(accounts.insert(), [{"id": r, "name": r, "created_ms": 0} for r in RENTERS])
        for n, op in enumerate(ops):
            if op[0] == "grant":
                _, renter, amount = op
                assert isinstance(renter, str) and isinstance(amount, int)
                grant_credits(conn, f"grant:{n}", renter, amount, n, "")
                pure.grant(f"grant:{n}", renter, amount, n)
                continue
            _, renter, host, meter, cost, twice = op
            assert isinstance(meter, str) and isinstance(cost, int)
            start = starts.get(meter, 0)
            starts[meter] = start + 1000
            interval = MeteredInterval(
                key=f"ct:{meter}:{start}",
                renter=str(renter),
                host=str(host),
                meter=meter,
                start_ms=start,
                end_ms=start + 1000,
                cost_micros=cost,
            )
            entry = charge_entry(interval, pure.metered_total(meter), FEE_PPM, n)
            post_entries(conn, [entry])
            if twice:
                post_entries(conn, [entry])
            pure.charge(interval, n)
            if twice:
                assert pure.charge(interval, n).duplicate
        assert check_ledger(conn) == []
        assert conn.execute(select(func.count()).select_from(ledger_entries)).scalar() == len(pure)
        for account in [
            *(renter_account(r) for r in RENTERS),
            *(host_account(h) for h in HOSTS),
            PLATFORM_FEES,
            CREDITS_ISSUED,
        ]:
            assert account_balance(conn, account) == pure.balance(account), account
    # Replaying the pure ledger's entries gives the same balances again.
    assert Ledger.replay(pure.entries, FEE_PPM).balances() == pure.balances()
    engine.dispose()
