"""One agent per state directory: an agent holds an exclusive ``flock`` on
``<agent dir>/agent.lock`` from before it touches the directory until it ends. Two agents on
one directory (a second `crucible agent` on a machine where `crucible up` runs its own, both
defaulting to ``$CRUCIBLE_HOME/agent``) each took the other's sandboxes and pod disks for
leftovers of a crash and deleted them. The kernel drops the lock when the process ends,
however it ends, so a stale file never blocks a new agent."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO

from crucible.errors import Error

__all__ = ["AgentDirLock"]


class AgentDirLock:
    """The running agent's hold on its state directory; released by :meth:`close`."""

    def __init__(self, agent_dir: Path) -> None:
        agent_dir.mkdir(parents=True, exist_ok=True)
        self.path = agent_dir / "agent.lock"
        self._file: IO[str] | None = open(self.path, "a+")  # noqa: SIM115 (held while running)
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "?"
            self._file.close()
            self._file = None
            raise Error(
                f"another agent is running with the state directory {agent_dir} (pid "
                f"{holder}): two agents on one directory delete each other's sandboxes and pod "
                "disks. Give this one its own: `crucible agent --agent-dir DIR` (or "
                "CRUCIBLE_AGENT_DIR)"
            ) from None
        os.set_inheritable(self._file.fileno(), False)
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()  # closing the only descriptor releases the lock
            self._file = None
