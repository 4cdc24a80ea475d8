"""The market's indexes, so that quoting, leasing and preempting never scan the fleet.

- :class:`RankIndex`: for one device type and one ranking, the listed pools with *at least k*
  free units, for every k, each list sorted by the ranking key. A request for ``n`` devices
  reads list ``n`` from its best end; a pool whose free count moves from ``a`` to ``b`` enters
  or leaves only the lists between ``a`` and ``b`` (at most a host's device count).
- :class:`BidIndex`: the running interruptible leases of one device type, lowest bid first
  (ties: the most recently started first), which is the order they are preempted in.
- :class:`BandedRankIndex`: a :class:`RankIndex` per price band of the hosts' minimum bid,
  for requests with an explicit bid. They rank by reliability, but only hosts whose minimum
  is at most the bid may serve them: every host in a band below the bid's band qualifies, so
  the query reads the head of each such band (and filters only inside the bid's own band)
  instead of skipping, in one long list, every host that asks more than the bid.
- :class:`Levels`: a multiset of prices with counts (the book's price levels) that also knows
  its maximum, used to stop preemption walks early.

Lists are plain Python lists kept sorted with :mod:`bisect`: an insertion moves pointers with
one ``memmove``, a few microseconds for the 10,000s of hosts of one type.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator, Sequence

__all__ = [
    "BandedRankIndex",
    "BidEntry",
    "BidIndex",
    "Levels",
    "RankIndex",
    "RankKey",
    "price_band",
]

# (primary, secondary, host id): see rules.py for what primary and secondary are per ranking.
RankKey = tuple[int, int, str]
# (bid, -start_ms, lease id)
BidEntry = tuple[int, int, str]


class RankIndex:
    """Per k >= 1, the sorted keys of pools with at least k free units."""

    __slots__ = ("_by_k",)

    def __init__(self) -> None:
        self._by_k: list[list[RankKey]] = [[]]

    def at_least(self, k: int) -> Sequence[RankKey]:
        """Keys of pools with at least ``k`` free units, best first. Do not mutate the index
        while iterating over the result."""
        if k < 1:
            raise ValueError("k counts units from 1")
        return self._by_k[k] if k < len(self._by_k) else ()

    def add(self, key: RankKey, low: int, high: int) -> None:
        """The pool now has ``high`` free units where it had ``low`` (listed with ``low``)."""
        while len(self._by_k) <= high:
            self._by_k.append([])
        for k in range(low + 1, high + 1):
            insort(self._by_k[k], key)

    def remove(self, key: RankKey, low: int, high: int) -> None:
        """The pool now has ``low`` free units where it had ``high``."""
        for k in range(low + 1, high + 1):
            lst = self._by_k[k]
            i = bisect_left(lst, key)
            if i == len(lst) or lst[i] != key:
                raise AssertionError(f"rank index out of step: {key} not in list {k}")
            del lst[i]

    def sizes(self) -> list[int]:
        return [len(lst) for lst in self._by_k[1:]]

    def keys(self, k: int) -> list[RankKey]:
        return list(self.at_least(k))


def price_band(price: int) -> int:
    """A price's band: four per doubling (each about 19 % wide), monotone in the price, in
    integer arithmetic. ``price_band(a) < price_band(b)`` implies ``a < b``."""
    if price < 8:
        return price
    n = price.bit_length()
    return (n << 2) | ((price >> (n - 3)) & 0b11)


class BandedRankIndex:
    """One :class:`RankIndex` per price band."""

    __slots__ = ("_bands",)

    def __init__(self) -> None:
        self._bands: dict[int, RankIndex] = {}

    def add(self, band: int, key: RankKey, low: int, high: int) -> None:
        ix = self._bands.get(band)
        if ix is None:
            ix = self._bands[band] = RankIndex()
        ix.add(key, low, high)

    def remove(self, band: int, key: RankKey, low: int, high: int) -> None:
        if low == high:
            return
        self._bands[band].remove(key, low, high)

    def up_to(self, band: int, k: int) -> list[Sequence[RankKey]]:
        """The lists (pools with at least ``k`` free units) of every band up to ``band``."""
        return [ix.at_least(k) for b, ix in self._bands.items() if b <= band]

    def keys(self, band: int, k: int) -> list[RankKey]:
        ix = self._bands.get(band)
        return [] if ix is None else ix.keys(k)

    def bands(self) -> list[int]:
        return sorted(self._bands)

    def depth(self) -> int:
        return max((len(ix.sizes()) for ix in self._bands.values()), default=0)


class BidIndex:
    """Running interruptible leases of one device type in preemption order."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: list[BidEntry] = []

    def add(self, bid: int, start_ms: int, lease_id: str) -> None:
        insort(self._entries, (bid, -start_ms, lease_id))

    def remove(self, bid: int, start_ms: int, lease_id: str) -> None:
        entry = (bid, -start_ms, lease_id)
        i = bisect_left(self._entries, entry)
        if i == len(self._entries) or self._entries[i] != entry:
            raise AssertionError(f"bid index out of step: {entry} missing")
        del self._entries[i]

    def __iter__(self) -> Iterator[BidEntry]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class Levels:
    """Prices with counts; zero counts are dropped. ``max()`` is cached and recomputed only
    when the top level empties."""

    __slots__ = ("_counts", "_max")

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self._max: int | None = None

    def add(self, price: int, n: int) -> None:
        if n == 0:
            return
        left = self._counts.get(price, 0) + n
        if left < 0:
            raise AssertionError(f"price level {price} would go negative")
        if left == 0:
            del self._counts[price]
            if price == self._max:
                self._max = max(self._counts) if self._counts else None
            return
        self._counts[price] = left
        if self._max is None or price > self._max:
            self._max = price

    def max(self) -> int | None:
        return self._max

    def items(self) -> list[tuple[int, int]]:
        return sorted(self._counts.items())

    def total(self) -> int:
        return sum(self._counts.values())
