"""The ledger: double entry, exact fee rounding, idempotency, corrections, credit and caps,
replay; with a Hypothesis state machine over random postings."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from crucible.core.ledger import (
    CREDITS_ISSUED,
    MS_PER_DAY,
    PLATFORM_FEES,
    PPM,
    AccountKind,
    EntryKind,
    Ledger,
    MeteredInterval,
    balances_of,
    fee_share,
    format_usd,
    host_account,
    renter_account,
)
from crucible.errors import ConflictError, InvalidRequestError, NotFoundError


def interval(
    key: str, cost: int, renter: str = "ac-r", host: str = "ho-1", meter: str = "le-1", t: int = 0
) -> MeteredInterval:
    return MeteredInterval(key, renter, host, meter, t, t + 60_000, cost)


def test_a_charge_debits_the_renter_and_splits_between_host_and_platform() -> None:
    ledger = Ledger(fee_ppm=100_000)  # 10 %
    ledger.grant("g1", "ac-r", 10_000_000, 0)
    posted = ledger.charge(interval("i1", 1_000_005), 60_000)
    assert not posted.duplicate and posted.entry.kind is EntryKind.CHARGE
    assert ledger.balance(renter_account("ac-r")) == 10_000_000 - 1_000_005
    assert ledger.balance(PLATFORM_FEES) == 100_000  # floor(100000.5)
    assert ledger.balance(host_account("ho-1")) == 900_005
    assert ledger.balance(CREDITS_ISSUED) == -10_000_000
    assert ledger.total() == 0


def test_fee_rounding_runs_on_the_meters_total_so_it_never_drifts() -> None:
    ledger = Ledger(fee_ppm=150_000)  # 15 %
    for i in range(10):  # ten intervals of 7 micro-dollars: 1.05 of fee each
        ledger.charge(interval(f"i{i}", 7, t=i * 60_000), 0)
    assert ledger.balance(PLATFORM_FEES) == 70 * 150_000 // PPM == 10
    assert ledger.balance(host_account("ho-1")) == 60
    assert ledger.metered_total("le-1") == 70


@settings(max_examples=200, deadline=None, database=None)
@given(
    fee_ppm=st.integers(0, PPM),
    costs=st.lists(st.integers(0, 10**9), max_size=30),
)
def test_any_split_of_a_meter_pays_the_platform_exactly_its_share(
    fee_ppm: int, costs: list[int]
) -> None:
    ledger = Ledger(fee_ppm)
    for i, c in enumerate(costs):
        entry = ledger.charge(interval(f"i{i}", c, t=i), 0).entry
        assert sum(p.amount for p in entry.postings) == 0
        assert 0 <= entry.amount_for(PLATFORM_FEES) <= c
    assert ledger.balance(PLATFORM_FEES) == sum(costs) * fee_ppm // PPM
    assert ledger.balance(host_account("ho-1")) == sum(costs) - sum(costs) * fee_ppm // PPM
    assert fee_share(0, sum(costs), fee_ppm) == ledger.balance(PLATFORM_FEES)


def test_the_same_interval_twice_changes_nothing_and_a_reused_key_conflicts() -> None:
    ledger = Ledger(fee_ppm=100_000)
    first = ledger.charge(interval("i1", 500), 0)
    again = ledger.charge(interval("i1", 500), 99)
    assert again.duplicate and again.entry is first.entry and len(ledger) == 1
    with pytest.raises(ConflictError, match="already used"):
        ledger.charge(interval("i1", 501), 0)
    with pytest.raises(ConflictError):
        ledger.grant("i1", "ac-r", 5, 0)
    g = ledger.grant("g", "ac-r", 5, 0)
    assert ledger.grant("g", "ac-r", 5, 0).entry is g.entry
    with pytest.raises(ConflictError):
        ledger.grant("g", "ac-r", 6, 0)


def test_corrections_are_new_entries() -> None:
    ledger = Ledger(fee_ppm=100_000)
    ledger.grant("g", "ac-r", 1_000, 0)
    ledger.charge(interval("i1", 300), 0)
    before = ledger.entries
    rev = ledger.reverse("fix-1", "i1", 10, "metered twice by mistake").entry
    assert rev.kind is EntryKind.REVERSAL and rev.reverses == "i1"
    assert ledger.entries[: len(before)] == before  # nothing rewritten
    assert ledger.balance(renter_account("ac-r")) == 1_000
    assert ledger.balance(PLATFORM_FEES) == ledger.balance(host_account("ho-1")) == 0
    assert ledger.spent("ac-r", 0) == 0
    assert ledger.reverse("fix-1", "i1", 10, "metered twice by mistake").duplicate
    with pytest.raises(ConflictError, match="already reversed"):
        ledger.reverse("fix-2", "i1", 10)
    with pytest.raises(ConflictError, match="is a reversal"):
        ledger.reverse("fix-3", "fix-1", 10)
    with pytest.raises(NotFoundError):
        ledger.reverse("fix-4", "nope", 10)
    adj = ledger.adjust(
        "adj-1", {host_account("ho-1"): 50, PLATFORM_FEES: -50}, 20, "fee waived for ho-1"
    )
    assert adj.entry.kind is EntryKind.ADJUSTMENT and ledger.total() == 0
    with pytest.raises(InvalidRequestError, match="sum to zero"):
        ledger.adjust("adj-2", {PLATFORM_FEES: 1}, 20, "x")
    with pytest.raises(InvalidRequestError, match="move some money"):
        ledger.adjust("adj-3", {PLATFORM_FEES: 0}, 20, "x")


def test_credit_status_refuses_at_zero_and_at_the_daily_cap() -> None:
    ledger = Ledger(fee_ppm=0)
    status = ledger.status("ac-new", 0)
    assert not status.ok and "no credit left" in status.reason
    assert "crucible credits grant" in status.reason
    ledger.grant("g", "ac-r", 10_000_000, 0)
    assert ledger.status("ac-r", 0).ok
    ledger.set_daily_cap("ac-r", 2_000_000)
    ledger.charge(interval("i1", 1_500_000), 0)
    assert ledger.status("ac-r", 1).ok
    ledger.charge(interval("i2", 600_000, t=60_000), 0)
    capped = ledger.status("ac-r", 120_000)
    assert not capped.ok and "daily spend cap ($2.10 of $2.00" in capped.reason
    assert ledger.status("ac-r", MS_PER_DAY).ok  # a new UTC day
    ledger.charge(interval("i3", 8_000_000, t=MS_PER_DAY), 0)
    assert ledger.renters_without_credit() == ["ac-r"]
    assert ledger.balance(renter_account("ac-r")) == -100_000  # usage beyond the credit
    assert "balance -$0.10" in ledger.status("ac-r", MS_PER_DAY).reason
    ledger.set_daily_cap("ac-r", None)
    assert ledger.daily_cap("ac-r") is None
    with pytest.raises(InvalidRequestError):
        ledger.set_daily_cap("ac-r", -1)
    with pytest.raises(InvalidRequestError):
        ledger.grant("g2", "ac-r", 0, 0)


def test_replay_rebuilds_the_same_balances_and_refuses_damaged_input() -> None:
    ledger = Ledger(fee_ppm=123_457)
    ledger.grant("g", "ac-r", 10**9, 0)
    for i in range(20):
        ledger.charge(interval(f"i{i}", 1_000 * i + 7, meter=f"le-{i % 3}", t=i), i)
    ledger.reverse("r", "i4", 100)
    again = Ledger.replay(ledger.entries, fee_ppm=123_457)
    assert again.balances() == ledger.balances() == balances_of(ledger.entries)
    assert again.metered_total("le-1") == ledger.metered_total("le-1")
    assert again.spent("ac-r", 0) == ledger.spent("ac-r", 0)
    entries = list(ledger.entries)
    with pytest.raises(ValueError, match="out of order"):
        Ledger.replay(entries[1:], fee_ppm=123_457)
    with pytest.raises(ValueError, match="appears twice"):
        Ledger.replay([*entries, replace(entries[0], seq=len(entries))], fee_ppm=123_457)
    with pytest.raises(ValueError, match="does not balance"):
        unbalanced = replace(entries[0], postings=entries[0].postings[:1])
        Ledger.replay([unbalanced], fee_ppm=123_457)


def test_zero_cost_intervals_are_recorded_and_accounts_print() -> None:
    ledger = Ledger(fee_ppm=100_000)
    entry = ledger.charge(interval("i0", 0), 0).entry
    assert [p.amount for p in entry.postings] == [0]
    assert str(renter_account("ac-1")) == "renter:ac-1"
    assert host_account("h").kind is AccountKind.HOST
    assert [format_usd(x) for x in (2_100_000, -50_000, 123, 0, 1_234_567_890)] == [
        "$2.10",
        "-$0.05",
        "$0.000123",
        "$0.00",
        "$1,234.56789",
    ]
    with pytest.raises(ValueError):
        Ledger(fee_ppm=PPM + 1)


# -- the state machine -----------------------------------------------------------------------

RENTERS = ("ac-a", "ac-b", "ac-c")
HOSTS = ("ho-1", "ho-2")


class LedgerMachine(RuleBasedStateMachine):
    """Random grants, charges (with retries), reversals and adjustments; the books always
    balance, replay always agrees, and a retried posting never changes anything."""

    charges = Bundle("charges")

    @initialize(fee_ppm=st.sampled_from([0, 1, 100_000, 333_333, PPM]))
    def start(self, fee_ppm: int) -> None:
        self.ledger = Ledger(fee_ppm)
        self.fee_ppm = fee_ppm
        self.n = 0
        self.meter_cost: dict[str, int] = {}
        self.reversed_cost: dict[str, int] = {}

    def _key(self) -> str:
        self.n += 1
        return f"k{self.n}"

    @rule(renter=st.sampled_from(RENTERS), amount=st.integers(1, 10**8))
    def grant(self, renter: str, amount: int) -> None:
        before = self.ledger.balance(renter_account(renter))
        self.ledger.grant(self._key(), renter, amount, self.n)
        assert self.ledger.balance(renter_account(renter)) == before + amount

    @rule(
        target=charges,
        renter=st.sampled_from(RENTERS),
        host=st.sampled_from(HOSTS),
        meter=st.sampled_from(["le-1", "le-2", "le-3"]),
        cost=st.integers(0, 10**7),
        day=st.integers(0, 2),
    )
    def charge(self, renter: str, host: str, meter: str, cost: int, day: int) -> MeteredInterval:
        iv = MeteredInterval(
            self._key(), renter, host, meter, day * MS_PER_DAY, day * MS_PER_DAY + 1, cost
        )
        spent = self.ledger.spent(renter, day)
        self.ledger.charge(iv, self.n)
        self.meter_cost[meter] = self.meter_cost.get(meter, 0) + cost
        assert self.ledger.spent(renter, day) == spent + cost
        return iv

    @rule(iv=charges)
    def retry(self, iv: MeteredInterval) -> None:
        before = (self.ledger.balances(), len(self.ledger))
        posted = self.ledger.charge(iv, self.n + 1000)
        assert posted.duplicate
        assert (self.ledger.balances(), len(self.ledger)) == before

    @rule(iv=consumes(charges))
    def reverse(self, iv: MeteredInterval) -> None:
        fee = self.ledger.entry(iv.key).amount_for(PLATFORM_FEES)
        before = self.ledger.balance(PLATFORM_FEES)
        self.ledger.reverse(self._key(), iv.key, self.n)
        assert self.ledger.balance(PLATFORM_FEES) == before - fee
        self.reversed_cost[iv.meter] = self.reversed_cost.get(iv.meter, 0) + iv.cost_micros

    @rule(renter=st.sampled_from(RENTERS), host=st.sampled_from(HOSTS), amount=st.integers(1, 999))
    def adjust(self, renter: str, host: str, amount: int) -> None:
        self.ledger.adjust(
            self._key(),
            {renter_account(renter): amount, host_account(host): -amount},
            self.n,
            "refund",
        )

    @invariant()
    def books_balance(self) -> None:
        assert self.ledger.total() == 0
        assert self.ledger.balance(CREDITS_ISSUED) <= 0

    @invariant()
    def replay_agrees(self) -> None:
        again = Ledger.replay(self.ledger.entries, self.fee_ppm)
        assert again.balances() == self.ledger.balances()

    @invariant()
    def meters_total_their_charges(self) -> None:
        for meter, cost in self.meter_cost.items():
            assert self.ledger.metered_total(meter) == cost


LedgerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None, database=None
)
test_ledger_state_machine = LedgerMachine.TestCase
