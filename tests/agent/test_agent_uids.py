"""The sandbox uid pool: one uid per live sandbox across every agent of the machine."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from crucible.agent.uids import UidPool, processes_of_uid
from crucible.errors import InvalidRequestError

BASE = 2_145_000_000


def test_two_agents_never_hold_the_same_uid(tmp_path: Path) -> None:
    a = UidPool(BASE, 3, tmp_path)
    b = UidPool(BASE, 3, tmp_path)  # another agent on the same machine
    held = [a.acquire(), b.acquire(), a.acquire()]
    assert sorted(u.uid for u in held) == [BASE, BASE + 1, BASE + 2]
    with pytest.raises(RuntimeError, match="CRUCIBLE_SANDBOX_UID_COUNT"):
        b.acquire()
    held[1].release()
    held[1].release()  # idempotent
    assert b.acquire().uid == held[1].uid


def test_a_uid_that_still_owns_a_process_is_skipped(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("starting a process as another uid needs root")
    leftover = subprocess.Popen(["sleep", "30"], user=BASE, group=BASE, extra_groups=[])
    try:
        assert processes_of_uid(BASE) == [leftover.pid]
        assert UidPool(BASE, 2, tmp_path).acquire().uid == BASE + 1
    finally:
        leftover.kill()
        leftover.wait()


@pytest.mark.parametrize(("base", "count"), [(0, 10), (5000, 0), (2**31 - 10, 100)])
def test_unusable_ranges_are_refused(base: int, count: int) -> None:
    with pytest.raises(InvalidRequestError, match="CRUCIBLE_SANDBOX_UID_BASE"):
        UidPool(base, count)
