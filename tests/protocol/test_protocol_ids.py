"""Object ids: prefixed, unique, and sortable in creation order."""

from __future__ import annotations

import re
import threading
from types import SimpleNamespace

import pytest

from crucible.protocol import ids
from crucible.protocol.ids import new_id

ID = re.compile(r"^(?P<prefix>[a-z]+)-[0-9a-hjkmnp-tv-z]{22}$")  # Crockford base32, lower case


def test_shape() -> None:
    for prefix in ("ca", "fn", "ap", "ct", "ho", "tk", "ac"):
        made = new_id(prefix)
        match = ID.match(made)
        assert match and match.group("prefix") == prefix, made
        assert len(made) <= 32  # the store's id columns are String(32)


def test_ids_are_unique_and_sort_in_creation_order() -> None:
    made = [new_id("ca") for _ in range(20_000)]
    assert len(set(made)) == len(made)
    assert made == sorted(made)


def fake_clock(monkeypatch: pytest.MonkeyPatch, start_ns: int) -> list[int]:
    """Drive new_id from a hand-set clock, from a fresh state, restored afterwards."""
    clock = [start_ns]
    monkeypatch.setattr(ids, "time", SimpleNamespace(time_ns=lambda: clock[0]))
    monkeypatch.setattr(ids, "_last", [0, 0])
    return clock


def test_ids_stay_ordered_when_the_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = fake_clock(monkeypatch, 1_800_000_000_000_000_000)
    made = [new_id("ca")]
    for step in (0, 0, -5_000_000_000, 1_000_000, -1, 0, 60_000_000_000):
        clock[0] += step
        made.append(new_id("ca"))
    assert made == sorted(made) and len(set(made)) == len(made)


def test_later_milliseconds_sort_later(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = fake_clock(monkeypatch, 1_700_000_000_000_000_000)
    first = new_id("ca")
    clock[0] += 1_000_000  # one millisecond
    second = new_id("ca")
    assert first < second
    assert first[3:13] < second[3:13]  # the time part moved, not only the random part


def test_unique_across_threads() -> None:
    out: list[list[str]] = [[] for _ in range(8)]

    def work(mine: list[str]) -> None:
        mine.extend(new_id("ca") for _ in range(2_000))

    threads = [threading.Thread(target=work, args=(o,)) for o in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for o in out for i in o]
    assert len(set(every)) == len(every)
    assert all(o == sorted(o) for o in out)
