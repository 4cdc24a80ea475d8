"""The server's response writes: a head and its body in one socket write, a lone write at the
end of its loop step, nothing lost on close."""

from __future__ import annotations

import asyncio
from typing import Any

from crucible.server.http_protocol import _CoalescingTransport


class _Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None


def test_writes_of_one_step_go_out_together_and_close_flushes() -> None:
    async def scenario() -> _Recorder:
        raw = _Recorder()
        t = _CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        assert raw.writes == []  # a lone write waits for the step's end
        t.write(b"body")  # the second goes at once, with the first: one write
        assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        await asyncio.sleep(0)
        assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]  # nothing more at the end
        t.write(b"chunk")
        assert raw.writes[-1] != b"chunk"
        await asyncio.sleep(0)
        assert raw.writes[-1] == b"chunk"  # a lone write goes at the end of its step
        assert t.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is delegated
        t.write(b"last")
        t.close()  # a response that ends with a close is still sent whole
        assert raw.writes[-1] == b"last" and raw.closed
        return raw

    asyncio.run(scenario())
