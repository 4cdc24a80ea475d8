"""The ledger: double-entry bookkeeping in integer micro-dollars (the pure core).

Every movement of money is an :class:`Entry`: a set of :class:`Posting` s, one per ledger
account, whose amounts sum to exactly zero. A posting's amount is signed: positive credits the
account, negative debits it. An account's balance is the sum of its postings, so the balances
of all accounts always sum to zero, and replaying the entry list (:meth:`Ledger.replay`) gives
back exactly the same balances. Entries are immutable; a mistake is corrected by a new entry
(:meth:`Ledger.reverse`, :meth:`Ledger.adjust`), never by editing an old one.

Ledger accounts (:class:`LedgerAccount`) come in four kinds:

- ``renter:<account id>``: a builder's prepaid balance. Operators' grants credit it; each
  metered interval debits it. It may go below zero by what was used between two metering
  ticks; the shell stops the renter's work when it reaches zero (see :meth:`Ledger.status`).
- ``host:<host id>``: a host's earnings. Each metered interval credits it with the price
  less the platform fee.
- ``platform:fees``: the exchange's fee income.
- ``issued:credits``: the counter-account of operator grants (credits issued). It is the only
  account that goes negative in normal operation: minus the credits ever granted.

**Idempotency.** Every entry carries a key, unique in the ledger. Posting the same key again
with the same content returns the existing entry and changes nothing (a retried metering tick,
an agent that reconnects, a control plane that restarts); the same key with different content
is a :class:`~crucible.errors.ConflictError`, because two different intervals must never share
a key. Metering keys intervals by (lease, start) so each millisecond is charged once.

**The fee rule.** The platform fee is ``fee_ppm`` parts per million of each charge, rounded
*on the meter's running total*: for a meter (a lease or a reservation) that has already been
charged ``C`` micro-dollars, an interval of cost ``c`` pays the platform
``floor((C + c) * fee_ppm / 10**6) - floor(C * fee_ppm / 10**6)`` and the host the rest of
``c``. Each entry therefore balances to the micro-dollar (nothing is lost or created), and
over a whole lease the platform receives exactly ``floor(total * fee_ppm / 10**6)``: the
rounding never drifts towards either side however the lease is cut into intervals.

**Spend caps.** An account may have a daily spend cap (UTC days). Charges are always recorded,
since the compute was used; once the day's charges reach the cap, :meth:`Ledger.status`
reports it so the shell refuses new leases and drains running work, exactly as for a renter
with no credit left. Spend can exceed the cap by at most the intervals already running when
it was reached.

Nothing here does I/O or reads a clock: times are parameters. The shell persists entries in
order (one row per entry) and rebuilds a :class:`Ledger` by replaying them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from crucible.errors import ConflictError, InvalidRequestError, NotFoundError

__all__ = [
    "CREDITS_ISSUED",
    "MS_PER_DAY",
    "PLATFORM_FEES",
    "PPM",
    "AccountKind",
    "CreditStatus",
    "Entry",
    "EntryKind",
    "Ledger",
    "LedgerAccount",
    "MeteredInterval",
    "Posted",
    "Posting",
    "balances_of",
    "charge_postings",
    "credit_status",
    "fee_share",
    "format_usd",
    "host_account",
    "renter_account",
]

PPM = 1_000_000
MS_PER_DAY = 86_400_000
MICROS_PER_USD = 1_000_000


def format_usd(micros: int) -> str:
    """Micro-dollars for people: ``$2.10``, ``-$0.05``, ``$0.000123`` (whole cents get two
    decimals; anything finer keeps every significant micro-dollar)."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    if frac % 10_000 == 0:
        return f"{sign}${whole:,}.{frac // 10_000:02d}"
    return f"{sign}${whole:,}.{f'{frac:06d}'.rstrip('0')}"


class AccountKind(StrEnum):
    RENTER = "renter"
    HOST = "host"
    PLATFORM = "platform"
    ISSUED = "issued"


@dataclass(frozen=True, slots=True, order=True)
class LedgerAccount:
    kind: AccountKind
    id: str

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.id}"


PLATFORM_FEES = LedgerAccount(AccountKind.PLATFORM, "fees")
CREDITS_ISSUED = LedgerAccount(AccountKind.ISSUED, "credits")


def renter_account(account_id: str) -> LedgerAccount:
    return LedgerAccount(AccountKind.RENTER, account_id)


def host_account(host_id: str) -> LedgerAccount:
    return LedgerAccount(AccountKind.HOST, host_id)


class EntryKind(StrEnum):
    CHARGE = "charge"
    GRANT = "grant"
    REVERSAL = "reversal"
    ADJUSTMENT = "adjustment"


@dataclass(frozen=True, slots=True)
class Posting:
    account: LedgerAccount
    amount: int  # micro-dollars; positive credits the account, negative debits it


@dataclass(frozen=True, slots=True)
class MeteredInterval:
    """One closed metering interval of a lease (or a reservation) to charge.

    ``key`` is its idempotency key (e.g. ``lease:le-1:1700000000000``); ``meter`` is the lease or
    reservation it belongs to, over which the fee is rounded (see the module docstring);
    ``cost_micros`` is what the renter owes for ``[start_ms, end_ms)``, computed by metering.
    """

    key: str
    renter: str
    host: str
    meter: str
    start_ms: int
    end_ms: int
    cost_micros: int


@dataclass(frozen=True, slots=True)
class Entry:
    """An immutable ledger entry. ``seq`` is its position in the ledger (0, 1, 2, ...).

    For a charge, ``interval`` is what was charged. For a reversal, ``reverses`` is the key of
    the entry it cancels. ``day`` is the UTC day (``ms // MS_PER_DAY``) a charge counts
    towards for spend caps: the day its interval starts."""

    seq: int
    key: str
    kind: EntryKind
    at_ms: int
    postings: tuple[Posting, ...]
    memo: str = ""
    interval: MeteredInterval | None = None
    reverses: str | None = None

    def amount_for(self, account: LedgerAccount) -> int:
        return sum(p.amount for p in self.postings if p.account == account)

    def same_content(self, other: Entry) -> bool:
        return (self.kind, self.postings, self.memo, self.interval, self.reverses) == (
            other.kind,
            other.postings,
            other.memo,
            other.interval,
            other.reverses,
        )


@dataclass(frozen=True, slots=True)
class Posted:
    """What posting an entry did. ``duplicate`` is true when the key was already in the
    ledger with the same content: nothing changed and ``entry`` is the original."""

    entry: Entry
    duplicate: bool


@dataclass(frozen=True, slots=True)
class CreditStatus:
    """Whether a renter may take new leases now. When ``ok`` is false, ``reason`` is the
    message to show the builder, and the shell must also drain the renter's running work."""

    renter: str
    balance: int
    spent_today: int
    daily_cap: int | None
    ok: bool
    reason: str


def fee_share(charged_before: int, cost: int, fee_ppm: int) -> int:
    """The platform's part of an interval costing ``cost`` on a meter that has already been
    charged ``charged_before`` (the running-total rule of the module docstring)."""
    return (charged_before + cost) * fee_ppm // PPM - charged_before * fee_ppm // PPM


def charge_postings(
    interval: MeteredInterval, charged_before: int, fee_ppm: int
) -> tuple[Posting, ...]:
    """The postings of a charge: the renter pays the interval's cost, the platform gets its
    fee (the running-total rule, ``charged_before`` being what the meter was charged before)
    and the host the rest."""
    fee = fee_share(charged_before, interval.cost_micros, fee_ppm)
    return _compact(
        [
            Posting(renter_account(interval.renter), -interval.cost_micros),
            Posting(host_account(interval.host), interval.cost_micros - fee),
            Posting(PLATFORM_FEES, fee),
        ]
    )


def credit_status(
    renter: str, balance: int, spent_today: int, daily_cap: int | None
) -> CreditStatus:
    """May ``renter`` start new work? Refused at a balance of zero or below, and once today's
    spend reached the daily cap; ``reason`` says so in words a builder can act on."""
    if balance <= 0:
        reason = (
            f"account {renter} has no credit left (balance {format_usd(balance)}): new "
            "leases are refused and running containers are drained. Ask the exchange's "
            "operator to grant credits (`crucible credits grant`)."
        )
        return CreditStatus(renter, balance, spent_today, daily_cap, False, reason)
    if daily_cap is not None and spent_today >= daily_cap:
        reason = (
            f"account {renter} reached its daily spend cap ({format_usd(spent_today)} of "
            f"{format_usd(daily_cap)} today, UTC): new leases are refused and running "
            "containers are drained until 00:00 UTC. Raise the cap to continue today."
        )
        return CreditStatus(renter, balance, spent_today, daily_cap, False, reason)
    return CreditStatus(renter, balance, spent_today, daily_cap, True, "")


def balances_of(entries: Iterable[Entry]) -> dict[LedgerAccount, int]:
    """Every account's balance: the sum of its postings (accounts never posted are absent)."""
    out: dict[LedgerAccount, int] = {}
    for entry in entries:
        for p in entry.postings:
            out[p.account] = out.get(p.account, 0) + p.amount
    return out


class Ledger:
    """The ledger's state: the entry list plus what is derived from it (balances, the keys
    seen, each meter's running total, each renter's spend per day).

    ``fee_ppm`` is the platform fee in parts per million of every charge (100 000 = 10 %).
    Daily caps (:meth:`set_daily_cap`) are configuration, not entries: a replay takes them
    again from the shell.
    """

    def __init__(self, fee_ppm: int) -> None:
        if not 0 <= fee_ppm <= PPM:
            raise ValueError(f"fee_ppm must be within 0..{PPM}, got {fee_ppm}")
        self.fee_ppm = fee_ppm
        self._entries: list[Entry] = []
        self._by_key: dict[str, Entry] = {}
        self._balances: dict[LedgerAccount, int] = {}
        self._metered: dict[str, int] = {}  # meter -> total charged on it
        self._spent: dict[tuple[str, int], int] = {}  # (renter, UTC day) -> charged
        self._reversed: set[str] = set()
        self._caps: dict[str, int] = {}

    # -- reading ---------------------------------------------------------------------------

    @property
    def entries(self) -> Sequence[Entry]:
        """The entries in posting order (a copy: entries are immutable)."""
        return tuple(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, key: str) -> Entry:
        try:
            return self._by_key[key]
        except KeyError:
            raise NotFoundError(f"no ledger entry with key {key!r}") from None

    def balance(self, account: LedgerAccount) -> int:
        return self._balances.get(account, 0)

    def balances(self) -> dict[LedgerAccount, int]:
        return dict(self._balances)

    def total(self) -> int:
        """The sum of all balances: zero, always (each entry sums to zero)."""
        return sum(self._balances.values())

    def metered_total(self, meter: str) -> int:
        """What has been charged on a lease or reservation so far."""
        return self._metered.get(meter, 0)

    def spent(self, renter: str, day: int) -> int:
        """What the renter was charged for intervals starting on UTC day ``day``."""
        return self._spent.get((renter, day), 0)

    def renters_without_credit(self) -> list[str]:
        """Renters whose balance is zero or below, sorted: the shell refuses them new leases
        and drains their running containers. (A renter never granted anything has no
        account in the ledger yet and is not listed; :meth:`status` refuses it too.)"""
        return sorted(
            a.id for a, b in self._balances.items() if a.kind is AccountKind.RENTER and b <= 0
        )

    def status(self, renter: str, now_ms: int) -> CreditStatus:
        """May ``renter`` start new work now? Refused at a balance of zero or below, and once
        today's spend reached the daily cap."""
        day = now_ms // MS_PER_DAY
        return credit_status(
            renter,
            self.balance(renter_account(renter)),
            self.spent(renter, day),
            self._caps.get(renter),
        )

    # -- configuration ---------------------------------------------------------------------

    def set_daily_cap(self, renter: str, cap_micros: int | None) -> None:
        """Set (or with ``None`` remove) a renter's spend cap per UTC day."""
        if cap_micros is None:
            self._caps.pop(renter, None)
            return
        if cap_micros < 0:
            raise InvalidRequestError("a daily spend cap cannot be negative")
        self._caps[renter] = cap_micros

    def daily_cap(self, renter: str) -> int | None:
        return self._caps.get(renter)

    # -- posting ---------------------------------------------------------------------------

    def charge(self, interval: MeteredInterval, at_ms: int) -> Posted:
        """Charge one metered interval: debit the renter its cost, credit the platform its fee
        (the running-total rule) and the host the rest. Idempotent by ``interval.key``."""
        if interval.cost_micros < 0:
            raise ValueError(f"interval {interval.key} has a negative cost")
        if interval.end_ms < interval.start_ms:
            raise ValueError(f"interval {interval.key} ends before it starts")
        existing = self._by_key.get(interval.key)
        if existing is not None:
            # Compare with the original's interval only: the fee split of a replayed interval
            # would be computed from a later running total, so it is not recomputed.
            if existing.kind is EntryKind.CHARGE and existing.interval == interval:
                return Posted(existing, True)
            raise ConflictError(
                f"ledger key {interval.key!r} was already used for a different entry"
            )
        postings = charge_postings(interval, self.metered_total(interval.meter), self.fee_ppm)
        entry = Entry(
            seq=len(self._entries),
            key=interval.key,
            kind=EntryKind.CHARGE,
            at_ms=at_ms,
            postings=postings,
            memo=f"{interval.meter} [{interval.start_ms}, {interval.end_ms})",
            interval=interval,
        )
        return Posted(self._append(entry), False)

    def grant(
        self, key: str, renter: str, amount_micros: int, at_ms: int, memo: str = ""
    ) -> Posted:
        """An operator grants a renter prepaid credits. Idempotent by ``key``."""
        if amount_micros <= 0:
            raise InvalidRequestError("a grant must be a positive number of micro-dollars")
        entry = Entry(
            seq=len(self._entries),
            key=key,
            kind=EntryKind.GRANT,
            at_ms=at_ms,
            postings=(
                Posting(renter_account(renter), amount_micros),
                Posting(CREDITS_ISSUED, -amount_micros),
            ),
            memo=memo,
        )
        return self._post(entry)

    def reverse(self, key: str, of_key: str, at_ms: int, memo: str = "") -> Posted:
        """Cancel an entry with a new one whose postings are its exact negation. An entry can
        be reversed once; a reversal cannot itself be reversed (post an adjustment instead).
        Reversing a charge also takes it off the renter's daily spend, but not off the meter's
        running total (so later fee rounding is unaffected)."""
        original = self.entry(of_key)
        entry = Entry(
            seq=len(self._entries),
            key=key,
            kind=EntryKind.REVERSAL,
            at_ms=at_ms,
            postings=tuple(Posting(p.account, -p.amount) for p in original.postings),
            memo=memo,
            reverses=of_key,
        )
        existing = self._by_key.get(key)
        if existing is None:
            if original.kind is EntryKind.REVERSAL:
                raise ConflictError(f"{of_key!r} is a reversal; correct it with an adjustment")
            if of_key in self._reversed:
                raise ConflictError(f"ledger entry {of_key!r} is already reversed")
        return self._post(entry)

    def adjust(
        self, key: str, postings: Mapping[LedgerAccount, int], at_ms: int, memo: str
    ) -> Posted:
        """A correction by hand: any postings that sum to zero (say why in ``memo``)."""
        if sum(postings.values()) != 0:
            raise InvalidRequestError(
                f"an adjustment must sum to zero; these postings sum to {sum(postings.values())}"
            )
        if not any(postings.values()):
            raise InvalidRequestError("an adjustment must move some money")
        entry = Entry(
            seq=len(self._entries),
            key=key,
            kind=EntryKind.ADJUSTMENT,
            at_ms=at_ms,
            postings=_compact([Posting(a, v) for a, v in sorted(postings.items())]),
            memo=memo,
        )
        return self._post(entry)

    # -- replay ----------------------------------------------------------------------------

    @classmethod
    def replay(
        cls, entries: Iterable[Entry], fee_ppm: int, daily_caps: Mapping[str, int] | None = None
    ) -> Ledger:
        """Rebuild a ledger from its entries (as the shell loads them from the store). The
        entries are taken as recorded, fee splits included; they must be in ``seq`` order."""
        ledger = cls(fee_ppm)
        for renter, cap in (daily_caps or {}).items():
            ledger.set_daily_cap(renter, cap)
        for entry in entries:
            if entry.seq != len(ledger._entries):
                raise ValueError(f"entry {entry.key!r} is out of order (seq {entry.seq})")
            if entry.key in ledger._by_key:
                raise ValueError(f"entry key {entry.key!r} appears twice")
            if sum(p.amount for p in entry.postings) != 0:
                raise ValueError(f"entry {entry.key!r} does not balance")
            ledger._append(entry)
        return ledger

    # -- internals -------------------------------------------------------------------------

    def _post(self, entry: Entry) -> Posted:
        existing = self._by_key.get(entry.key)
        if existing is not None:
            if existing.same_content(entry):
                return Posted(existing, True)
            raise ConflictError(f"ledger key {entry.key!r} was already used for a different entry")
        return Posted(self._append(entry), False)

    def _append(self, entry: Entry) -> Entry:
        self._entries.append(entry)
        self._by_key[entry.key] = entry
        for p in entry.postings:
            self._balances[p.account] = self._balances.get(p.account, 0) + p.amount
        if entry.kind is EntryKind.CHARGE and entry.interval is not None:
            iv = entry.interval
            self._metered[iv.meter] = self._metered.get(iv.meter, 0) + iv.cost_micros
            day_key = (iv.renter, iv.start_ms // MS_PER_DAY)
            self._spent[day_key] = self._spent.get(day_key, 0) + iv.cost_micros
        elif entry.kind is EntryKind.REVERSAL and entry.reverses is not None:
            self._reversed.add(entry.reverses)
            original = self._by_key[entry.reverses]
            if original.interval is not None:
                iv = original.interval
                day_key = (iv.renter, iv.start_ms // MS_PER_DAY)
                self._spent[day_key] = self._spent.get(day_key, 0) - iv.cost_micros
        return entry


def _compact(postings: list[Posting]) -> tuple[Posting, ...]:
    """Merge postings to the same account and drop zero amounts (a fee of 0 is not a
    posting); an entry whose amounts are all zero keeps its first posting, at 0, so it still
    says whom it concerned."""
    merged: dict[LedgerAccount, int] = {}
    for p in postings:
        merged[p.account] = merged.get(p.account, 0) + p.amount
    kept = tuple(Posting(a, v) for a, v in merged.items() if v != 0)
    return kept or (postings[0],)
