"""Ship what the function prints to the control plane: stdout and stderr, line by line, each
line tagged with the call being handled (if any), sent in batches about every half second
from a background thread. What is printed still reaches the process's own stdout/stderr too
(the agent keeps their tail for crash reports).

Two taps. Python's ``print`` goes through ``sys.stdout``/``sys.stderr``, replaced by tees
that know the call of the thread that printed. Everything else written to file descriptors
1 and 2 (a subprocess's output, C extensions, ``os.write``) goes through a pipe that a
thread reads; its lines carry the call being handled when there is exactly one.

If the control plane is unreachable for long, or a function prints faster than it can be
sent, the oldest unsent lines are dropped and a line saying how many is sent in their place.
"""

from __future__ import annotations

import contextlib
import faulthandler
import fcntl
import io
import os
import sys
import termios
import threading
import time
from contextvars import ContextVar
from typing import Any, TextIO

from crucible.protocol.transport import Transport

__all__ = ["CALL_ID", "LogShipper", "current_call_id"]

# The call or web request an asyncio task is handling (several share the app's event loop,
# worker/web_channel.py): lines printed from a task carry it when its thread names none.
CALL_ID: ContextVar[str | None] = ContextVar("crucible_call_id", default=None)

MAX_LINE = 8192
_installed: LogShipper | None = None  # the container's shipper (one per worker process)
MAX_BUFFERED = 10_000
FLUSH_EVERY_S = 0.5


def current_call_id() -> str | None:
    """The call (or web request) the calling thread or task is handling in this container;
    None outside a call or outside a container."""
    return _installed.call_id if _installed is not None else CALL_ID.get()


class _Tee(io.TextIOBase):
    def __init__(
        self, shipper: LogShipper, stream: str, original: TextIO, fd: int | None = None
    ) -> None:
        self._shipper = shipper
        self._stream = stream
        self._original = original
        self._fd = fd  # the descriptor whose pipe is tapped (what fileno() gives out)
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
        # A subprocess given sys.stdout writes to the tapped descriptor: it is shipped too.
        return self._fd if self._fd is not None else self._original.fileno()

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
        self._calls: dict[int, str] = {}  # thread → the call it handles
        self._ended: tuple[str, float] | None = None  # the call that ended last, and when
        self._pipes: list[int] = []  # the taps' read ends
        self._taps: list[tuple[int, int, threading.Thread]] = []  # (fd, its saved copy, reader)

    @property
    def call_id(self) -> str | None:
        """The call the current thread is handling (set by the worker)."""
        value: str | None = getattr(self._local, "call_id", None)
        return value if value is not None else CALL_ID.get()

    @call_id.setter
    def call_id(self, value: str | None) -> None:
        if value is None and self._taps:
            self._drain_taps()  # what the call wrote last is still its own
        self._local.call_id = value
        with self._lock:
            if value is None:
                ended = self._calls.pop(threading.get_ident(), None)
                if ended is not None:
                    self._ended = (ended, time.monotonic())
            else:
                self._calls[threading.get_ident()] = value

    def _drain_taps(self) -> None:
        """Wait a moment (50 ms at most) for the readers to take what is in the pipes."""
        deadline = time.monotonic() + 0.05
        for r in self._pipes:
            buf = bytearray(4)
            while time.monotonic() < deadline:
                try:
                    fcntl.ioctl(r, termios.FIONREAD, buf)
                except OSError:
                    break
                if not int.from_bytes(buf, sys.byteorder):
                    break
                time.sleep(0.001)

    def _sole_call(self) -> str | None:
        """The call being handled when there is exactly one (lines written to a descriptor
        cannot say which thread wrote them); with none, the call that ended last if it ended
        a moment ago (its last lines are read just after it returned)."""
        with self._lock:
            calls = set(self._calls.values())
            ended = self._ended
        if len(calls) == 1:
            return calls.pop()
        if not calls and ended is not None and time.monotonic() - ended[1] < 0.2:
            return ended[0]
        return None

    def install(self, *, descriptors: bool = True) -> None:
        """Tee sys.stdout and sys.stderr, tap descriptors 1 and 2 (``descriptors``), and
        start the sender."""
        global _installed
        _installed = self
        streams: list[tuple[str, TextIO, int | None]] = [
            ("stdout", sys.stdout, None),
            ("stderr", sys.stderr, None),
        ]
        if descriptors:
            sys.stdout.flush()
            sys.stderr.flush()
            streams = [
                (name, self._tap(fd, name), fd) for name, fd in (("stdout", 1), ("stderr", 2))
            ]
            # A crash's traceback must reach the agent's log even with no reader left.
            if faulthandler.is_enabled():
                faulthandler.enable(file=streams[1][1])
        out, err = (_Tee(self, name, original, fd) for name, original, fd in streams)
        self._tees = [out, err]
        sys.stdout, sys.stderr = out, err
        self._thread = threading.Thread(target=self._run, name="crucible-logs", daemon=True)
        self._thread.start()

    def _tap(self, fd: int, stream: str) -> TextIO:
        """Point ``fd`` at a pipe read by a thread that ships its lines and copies its bytes
        to where ``fd`` pointed; returns a text stream on that place (for Python's prints,
        which the tees ship themselves)."""
        saved = os.dup(fd)
        r, w = os.pipe()
        # Room for a C library that writes much while it holds the GIL, which the reader
        # needs (the kernel's limit for unprivileged pipes: 1 MiB by default).
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
        os.dup2(w, fd)
        os.close(w)
        self._pipes.append(r)
        reader = threading.Thread(
            target=self._pump, args=(r, saved, stream), name=f"crucible-{stream}", daemon=True
        )
        reader.start()
        self._taps.append((fd, saved, reader))
        # The worker's stream for its whole life.
        return open(
            saved, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False
        )

    def _pump(self, r: int, saved: int, stream: str) -> None:
        partial = b""
        try:
            while chunk := os.read(r, 1 << 16):
                view = memoryview(chunk)
                while view:  # where the descriptor pointed keeps every byte (the agent's tail)
                    try:
                        view = view[os.write(saved, view) :]
                    except OSError:
                        break
                lines = (partial + chunk).split(b"\n")
                partial = lines.pop()
                if len(partial) > MAX_LINE:
                    lines.append(partial)
                    partial = b""
                if lines:
                    call = self._sole_call()
                    for line in lines:
                        self.add(stream, line.decode("utf-8", "replace"), call_id=call)
        except OSError:
            pass
        finally:
            if partial:
                self.add(stream, partial.decode("utf-8", "replace"), call_id=self._sole_call())
            os.close(r)

    def add(self, stream: str, line: str, *, call_id: str | None = None) -> None:
        if len(line) > MAX_LINE:  # said, not cut in silence
            note = f" [... line cut: {len(line):,} characters, at most {MAX_LINE:,} are kept]"
            line = line[: MAX_LINE - len(note)] + note
        entry = {
            "ts_ms": time.time_ns() // 1_000_000,
            "stream": stream,
            "call_id": call_id if call_id is not None else self.call_id,
            "line": line,
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
        for tee in self._tees:
            with contextlib.suppress(Exception):
                tee.flush()
        # Descriptors 1 and 2 point where they did before: a reader ends once no process
        # (a subprocess left running) holds its pipe, and what it read is shipped below.
        self._pipes = []  # their readers close them
        for fd, saved, reader in self._taps:
            with contextlib.suppress(OSError):
                os.dup2(saved, fd)
            reader.join(timeout=1.0)
        self.flush()
