"""Ship what the function prints to the control plane: stdout and stderr, line by line, each
line tagged with the call being handled (if any), sent in batches about every half second
from a background thread. What is printed still reaches the process's own stdout/stderr too
(the agent keeps their tail for crash reports).

If the control plane is unreachable for long, or a function prints faster than it can be
sent, the oldest unsent lines are dropped and a line saying how many is sent in their place.
"""

from __future__ import annotations

import io
import sys
import threading
import time
from contextvars import ContextVar
from typing import Any, TextIO

from crucible.protocol.transport import Transport

__all__ = ["CALL_ID", "LogShipper"]

# The call or web request an asyncio task is handling (several share the app's event loop,
# worker/web_channel.py): lines printed from a task carry it when its thread names none.
CALL_ID: ContextVar[str | None] = ContextVar("crucible_call_id", default=None)

MAX_LINE = 8192
MAX_BUFFERED = 10_000
FLUSH_EVERY_S = 0.5


class _Tee(io.TextIOBase):
    def __init__(self, shipper: LogShipper, stream: str, original: TextIO) -> None:
        self._shipper = shipper
        self._stream = stream
        self._original = original
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._original.write(text)
        data = self._partial + text
        lines = data.split("\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE:  # a huge unterminated write: cut it
            lines.append(self._partial)
            self._partial = ""
        for line in lines:
            self._shipper.add(self._stream, line)
        return len(text)

    def flush(self) -> None:
        self._original.flush()

    def fileno(self) -> int:
        return self._original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._original, "encoding", "utf-8")

    def isatty(self) -> bool:
        return False

    def drain_partial(self) -> None:
        if self._partial:
            self._shipper.add(self._stream, self._partial)
            self._partial = ""


class LogShipper:
    def __init__(self, transport: Transport, container_id: str) -> None:
        self._transport = transport
        self._path = f"/v1/containers/{container_id}/logs"
        self._lock = threading.Lock()
        self._lines: list[dict[str, Any]] = []
        self._dropped = 0
        self._local = threading.local()  # the call each thread is handling
        self._tees: list[_Tee] = []
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    @property
    def call_id(self) -> str | None:
        """The call the current thread is handling (set by the worker)."""
        value: str | None = getattr(self._local, "call_id", None)
        return value if value is not None else CALL_ID.get()

    @call_id.setter
    def call_id(self, value: str | None) -> None:
        self._local.call_id = value

    def install(self) -> None:
        """Tee sys.stdout and sys.stderr, and start the sender."""
        out = _Tee(self, "stdout", sys.stdout)
        err = _Tee(self, "stderr", sys.stderr)
        self._tees = [out, err]
        sys.stdout, sys.stderr = out, err
        self._thread = threading.Thread(target=self._run, name="crucible-logs", daemon=True)
        self._thread.start()

    def add(self, stream: str, line: str) -> None:
        entry = {
            "ts_ms": time.time_ns() // 1_000_000,
            "stream": stream,
            "call_id": self.call_id,
            "line": line[:MAX_LINE],
        }
        with self._lock:
            self._lines.append(entry)
            if len(self._lines) > MAX_BUFFERED:
                drop = len(self._lines) - MAX_BUFFERED
                del self._lines[:drop]
                self._dropped += drop

    def _take(self) -> list[dict[str, Any]]:
        with self._lock:
            lines, self._lines = self._lines, []
            dropped, self._dropped = self._dropped, 0
        if dropped:
            lines.insert(
                0,
                {
                    "ts_ms": time.time_ns() // 1_000_000,
                    "stream": "stderr",
                    "call_id": None,
                    "line": f"[crucible] {dropped} log line(s) dropped: printed faster than "
                    "they could be sent",
                },
            )
        return lines

    def flush(self) -> None:
        """Send what is buffered now (the worker calls it before exiting)."""
        for tee in self._tees:
            tee.drain_partial()
        lines = self._take()
        for i in range(0, len(lines), 1000):
            try:
                self._transport.post(self._path, {"lines": lines[i : i + 1000]}, retry=False)
            except Exception:  # never let logging break the function
                with self._lock:
                    self._dropped += len(lines) - i
                return

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(FLUSH_EVERY_S)
            self._wake.clear()
            self.flush()

    def close(self) -> None:
        self._stopped = True
        self.flush()
