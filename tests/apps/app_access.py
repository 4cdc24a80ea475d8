"""A function that keeps its container running (and serves TCP inside it) while the access
tests exec, tunnel and SSH into it."""

from __future__ import annotations

import socket
import threading
import time

import crucible

app = crucible.App("access")


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def _serve(port: int) -> None:
    server = socket.create_server(("127.0.0.1", port))
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_echo, args=(conn,), daemon=True).start()


def _http(port: int) -> None:
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    ThreadingHTTPServer(("127.0.0.1", port), SimpleHTTPRequestHandler).serve_forever()


@app.function(timeout=300)
def hold(seconds: float, echo_port: int = 0, http_port: int = 0) -> str:
    """Run for ``seconds``; with ``echo_port``, an echo server listens there meanwhile, and
    with ``http_port`` an HTTP server of the work directory."""
    if echo_port:
        threading.Thread(target=_serve, args=(echo_port,), daemon=True).start()
    if http_port:
        threading.Thread(target=_http, args=(http_port,), daemon=True).start()
    time.sleep(seconds)
    return "done"


# A second app, so a test can run its own container while a module fixture holds `app`.
other = crucible.App("access-other")


@other.function(timeout=300)
def hold_other(seconds: float, echo_port: int = 0, http_port: int = 0) -> str:
    return hold.local(seconds, echo_port, http_port)
