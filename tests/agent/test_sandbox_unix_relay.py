"""The agent's Relay (agent/sandbox.py): a sandbox's Unix socket piped to the control plane's
TCP address, byte for byte and both ways, each connection on its own pair of threads."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from crucible.agent.sandbox import Relay


class _Upstream:
    """A TCP server standing in for the control plane: per connection it reads to EOF, then
    answers with b"got:" + what it read reversed, then closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            data = bytearray()
            while chunk := conn.recv(1 << 16):
                data += chunk
            conn.sendall(b"got:" + bytes(reversed(data)))


def _exchange(path: Path, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)  # the relay must pass this EOF on to the upstream
        out = bytearray()
        while chunk := s.recv(1 << 16):
            out += chunk
        return bytes(out)


@pytest.fixture
def relay(tmp_path: Path):
    up = _Upstream()
    r = Relay(tmp_path / "server.sock", f"http://127.0.0.1:{up.port}")
    yield r
    r.close()
    up.sock.close()


def test_relay_pipes_both_ways_and_passes_eof_on(relay: Relay) -> None:
    assert _exchange(relay.path, b"hello") == b"got:olleh"


def test_relay_carries_large_payloads_both_ways(relay: Relay) -> None:
    # Far beyond the sockets' buffers: the relay must hold back and resume, not drop bytes.
    payload = bytes(range(256)) * 40_000  # ~10 MB
    assert _exchange(relay.path, payload) == b"got:" + payload[::-1]


def test_relay_serves_concurrent_connections(relay: Relay) -> None:
    results: dict[int, bytes] = {}

    def one(i: int) -> None:
        results[i] = _exchange(relay.path, str(i).encode() * 50_000)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == {i: b"got:" + (str(i).encode() * 50_000)[::-1] for i in range(12)}


def test_relay_closes_the_sandbox_side_when_the_upstream_is_unreachable(tmp_path: Path) -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    r = Relay(tmp_path / "server.sock", f"http://127.0.0.1:{port}")
    try:
        assert _exchange(r.path, b"") == b""  # closed at once, nothing relayed
    finally:
        r.close()


def test_relay_close_stops_accepting(tmp_path: Path) -> None:
    up = _Upstream()
    r = Relay(tmp_path / "server.sock", f"http://127.0.0.1:{up.port}")
    assert _exchange(r.path, b"ab") == b"got:ba"
    r.close()
    up.sock.close()
    assert not r.path.exists()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s, pytest.raises(OSError):
        s.connect(str(r.path))
