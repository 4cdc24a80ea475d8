"""One exchange per state directory: the embedded exchange (`crucible up`) holds an exclusive
``flock`` on ``$CRUCIBLE_HOME/up.lock`` for as long as it runs, and writes its pid and URL in
that file. A second `crucible up` with the same home (on any port) is refused, and
`crucible down` finds the running exchange from the home alone.

The kernel drops the lock when the process ends, however it ends, so a stale file (after a
``kill -9``) never blocks a new start: the lock, not the file's presence, is the truth.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from crucible.errors import Error
from crucible.settings import Settings

__all__ = [
    "HomeLock",
    "RunningExchange",
    "StoreLock",
    "lock_path",
    "running_exchange",
    "running_exchange_at",
]


@dataclass(frozen=True)
class RunningExchange:
    """The exchange that holds a home's lock."""

    pid: int
    url: str
    home: Path

    def stop_hint(self) -> str:
        return f"stop it with `CRUCIBLE_HOME={self.home} crucible down`"


_LOCK_NAME = "up.lock"


def lock_path(settings: Settings) -> Path:
    return settings.home_path / _LOCK_NAME


def _read(path: Path, home: Path) -> RunningExchange | None:
    try:
        data = json.loads(path.read_text() or "{}")
        return RunningExchange(pid=int(data["pid"]), url=str(data["url"]), home=home)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_exchange(settings: Settings) -> RunningExchange | None:
    """The exchange running from ``settings``' home, or None when its lock is free."""
    return running_exchange_at(settings.home_path)


def running_exchange_at(home: Path) -> RunningExchange | None:
    """The exchange running from the state directory ``home``, or None."""
    path = home / _LOCK_NAME
    try:
        f = open(path)  # noqa: SIM115 (closed below)
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            found = _read(path, home)
            # Held, but its details not written yet (it is starting): a pid of 0 says so.
            return found or RunningExchange(0, "", home)
        except OSError:
            return None
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def _lock_exclusive(f: IO[str], tries: int = 10) -> bool:
    """Take the lock; a few tries, since a concurrent `running_exchange` check holds a shared
    lock for an instant."""
    for i in range(tries):
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if i + 1 < tries:
                time.sleep(0.05)
    return False


class HomeLock:
    """The running exchange's hold on its home (or a server's on its SQLite store, see
    :class:`StoreLock`); released when closed or when the process ends."""

    def __init__(self, settings: Settings, url: str) -> None:
        self.path = lock_path(settings)
        self._hold(url, settings.home_path)

    def _hold(self, url: str, home: Path) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = open(self.path, "a+")  # noqa: SIM115 (held while running)
        if not _lock_exclusive(self._file):
            self._file.close()
            self._file = None
            other = _read(self.path, home)
            who = f"pid {other.pid}, {other.url}" if other else "starting"
            raise Error(self._refusal(who, home)) from None
        os.set_inheritable(self._file.fileno(), False)
        self._file.seek(0)
        self._file.truncate()
        self._file.write(json.dumps({"pid": os.getpid(), "url": url}))
        self._file.flush()

    def _refusal(self, who: str, home: Path) -> str:
        return (
            f"an exchange is already running from {home} ({who}); use it, "
            f"or {RunningExchange(0, '', home).stop_hint()}. "
            "One exchange per home: give another one its own CRUCIBLE_HOME."
        )

    def close(self) -> None:
        if self._file is None:
            return
        with contextlib.suppress(OSError):
            self._file.seek(0)
            self._file.truncate()
        self._file.close()  # closing the only descriptor releases the lock
        self._file = None


class StoreLock(HomeLock):
    """A server's hold on a SQLite store file (``<store>.server.lock`` beside it), whatever
    its home: two servers on one SQLite file would both schedule, and run calls twice
    (SQLite has no leader election; replicas need PostgreSQL)."""

    def __init__(self, store: Path, url: str) -> None:
        self.path = store.with_name(store.name + ".server.lock")
        self.store = store
        self._hold(url, store.parent)

    def _refusal(self, who: str, home: Path) -> str:
        return (
            f"a server is already running on the SQLite store {self.store} ({who}): one "
            "server per SQLite store (two would both schedule, and run calls twice). Use it, "
            "stop it, or give this one another CRUCIBLE_DATABASE_URL (replicas need "
            "PostgreSQL)."
        )
