"""The app bench_access.py reaches: a container that runs an echo server while it holds."""

from __future__ import annotations

import socket
import threading
import time

import crucible

app = crucible.App("bench-access")


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(1 << 16):
            conn.sendall(data)


def serve_echo(port: int) -> None:
    server = socket.create_server(("127.0.0.1", port))
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_echo, args=(conn,), daemon=True).start()


@app.function(timeout=600)
def hold(seconds: float, port: int) -> str:
    threading.Thread(target=serve_echo, args=(port,), daemon=True).start()
    time.sleep(seconds)
    return "done"
