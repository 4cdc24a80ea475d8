"""A line longer than a log line holds is cut, and says so (a 20 MiB write became one line
of exactly 8,192 characters, with nothing saying the rest was dropped)."""

from __future__ import annotations

from crucible.protocol.transport import Transport
from crucible.worker.logs import MAX_LINE, LogShipper


def test_a_line_too_long_is_cut_saying_how_long_it_was() -> None:
    transport = Transport("http://127.0.0.1:9", "tok", retry_for_s=0)
    shipper = LogShipper(transport, "ct-1")
    try:
        shipper.add("stdout", "y" * 3_000_000)
        shipper.add("stdout", "short")
        long_line, short = (e["line"] for e in shipper._lines)
    finally:
        transport.close()
    assert len(long_line) == MAX_LINE and long_line.startswith("yyy")
    assert long_line.endswith("[... line cut: 3,000,000 characters, at most 8,192 are kept]")
    assert short == "short"
