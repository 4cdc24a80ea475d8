"""A small keep-alive JSON client over :mod:`http.client`, used by the SDK, agent and worker.

Why not httpx: the hot path (``.remote()`` round trip, the worker's exchange loop) is a few
hundred microseconds of Python on each side, and ``http.client`` with a persistent
connection costs a fraction of a general-purpose client's overhead and import time.

One :class:`Transport` may be shared by threads: each thread gets its own connection.
Connection failures are retried with backoff for ``retry_for_s`` seconds (a restarting control
plane is a normal event), and so is a load balancer's own 502/503/504 (every replica behind
it restarting); HTTP errors are raised as the :mod:`crucible.errors` class their
code names.

The server URL may be a comma-separated list of replicas' URLs (or one load balancer's): a
connection failure moves to the next one at once, and backoff starts only after every URL
failed in turn.
"""

from __future__ import annotations

import http.client
import re
import select
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from crucible.errors import (
    AuthError,
    Error,
    InvalidRequestError,
    RateLimitedError,
    ServerUnavailableError,
    StoreUnavailableError,
    error_from_wire,
)

__all__ = ["Transport", "server_urls"]


class _GatewayUnavailable(ConnectionError):
    """A load balancer in front of the replicas answered 502, 503 or 504 itself (no Crucible
    error in the body): no replica took the request, as when every one is restarting. It is
    retried like a refused connection."""


_RETRYABLE = (ConnectionError, http.client.HTTPException, socket.timeout, OSError)
_GATEWAY_STATUSES = (502, 503, 504)


def _unavailable(data: bytes) -> str | None:
    """Why a 502/503/504 is retried like a refused connection, read from its body once:
    ``""`` for a balancer's own answer (not a Crucible server's, whose errors are always
    ``{"error": {...}}``), a Crucible server's words for its store being away or full
    (``store_unavailable``), or None for any other error of a Crucible server."""
    try:
        err = orjson.loads(data)
    except orjson.JSONDecodeError:
        return ""
    if not (isinstance(err, dict) and "error" in err):
        return ""
    inner = err["error"]
    if not (isinstance(inner, dict) and inner.get("code") == StoreUnavailableError.code):
        return None
    return str(inner.get("message", ""))[:300]


# Requests that make something anew each time the server carries them out (a grant, a
# reservation, a pod, a version, a queue item). Those the server keys (services/
# request_keys.py) carry an Idempotency-Key made once per request: sent again after a
# connection failure, the server answers what it did the first time instead of doing it
# twice. The others are not sent again once the server may have received them (a server
# killed between its commit and its answer would take an item twice, run a job twice); a
# failure before they were sent is retried.
_KEYED = re.compile(
    r"^/v1/(?:accounts|apps|reservations|credits/grants|deployments|models|models/[^/]+/adapters"
    r"|fine-tunes|pods|secrets|clusters|ssh-keys|volumes/[^/]+/commit|queues/[^/]+/put)$"
)
# (The answers of a token and of a dict's pop hold the token and the values: not kept.)
_SENT_ONCE = re.compile(
    r"^(?:/v1/(?:tokens|dicts/[^/]+/pop|queues/[^/]+/get|jobs/[^/]+/[^/]+/run(?:sync)?)|/openai/v1/.*)$"
)


def _dropped(sock: socket.socket) -> bool:
    """Whether a kept-alive connection was closed by the server meanwhile (readable with
    nothing asked: EOF), so that a request is not sent on it to fail half-way."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def url_part(value: str) -> str:
    """``value`` as one segment of a URL path: percent-encoded whole, so that a '?', '#' or
    '/' in a name given on the command line is part of the name, not of the URL."""
    return urllib.parse.quote(value, safe="")


def server_urls(value: str) -> list[str]:
    """The URLs of a server setting: one URL, or several separated by commas (replicas)."""
    urls = [u.strip().rstrip("/") for u in value.split(",") if u.strip()]
    for url in urls:
        parsed = urllib.parse.urlsplit(url)
        try:
            port_ok = parsed.port is None or 1 <= parsed.port <= 65535
        except ValueError:  # not a number, or past 65535
            port_ok = False
        if parsed.scheme not in ("http", "https") or not parsed.hostname or not port_ok:
            raise Error(
                f"server URL {url!r} must look like http://127.0.0.1:8745, with a port from 1 to "
                "65535 (several replicas: comma-separated, http://a:8745,http://b:8745)"
            )
        if parsed.path.rstrip("/").endswith(("/v1", "/openai/v1")):
            # Every route already starts with /v1: the URL would ask for /v1/v1/...
            raise Error(
                f"server URL {url!r} ends in an API path: give the server's address alone "
                f"({parsed.scheme}://{parsed.netloc}); the routes' /v1 is added to it"
            )
    if not urls:
        raise Error("no server URL given; it must look like http://127.0.0.1:8745")
    return urls


class _Server:
    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.url = url
        self.https = parsed.scheme == "https"
        self.host = parsed.hostname or ""
        self.port = parsed.port or (443 if self.https else 80)
        self.prefix = parsed.path.rstrip("/")


def _unreachable_advice(urls: list[str], exc: BaseException) -> str:
    """What to do about a server that does not answer: an embedded exchange on this machine
    is started with `crucible up`; another one is its operator's to run; one that answers
    but cannot use its store is up already."""
    if isinstance(exc, _GatewayUnavailable) and str(exc).startswith("the server answered"):
        return "it runs, but cannot use its store: retry later, or tell its operator."
    hosts = {urllib.parse.urlsplit(u).hostname or "" for u in urls}
    if hosts <= {"127.0.0.1", "localhost", "::1"}:
        return "is it running? Start one with `crucible up`."
    return "is it running, and is the URL right? (CRUCIBLE_SERVER_URL)"


class Transport:
    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout_s: float = 90.0,
        retry_for_s: float = 30.0,
        user_agent: str = "crucible",
        unix_socket: str | None = None,
    ) -> None:
        """``unix_socket``: connect through this Unix socket instead of the URL's host and port
        (a sandboxed worker reaches the control plane through its agent's relay); requests
        still name the URL's host, and an https URL still speaks TLS to it."""
        self._servers = [_Server(u) for u in server_urls(base_url)]
        self._current = 0  # the server new connections go to; moves on connection failures
        self._unix_socket = unix_socket
        self._timeout = timeout_s
        self.retry_for_s = retry_for_s
        # Told once per request when it starts waiting for a server that does not answer
        # (the CLI says so on its terminal rather than staying silent for the window).
        self.on_wait: Callable[[str], None] | None = None
        self._headers = {"User-Agent": user_agent, "Accept": "application/json"}
        if token:
            if not all(" " < ch < "\x7f" for ch in token):
                # A token file saved with CRLF, a pasted space: the HTTP library would fail
                # on the header (a traceback) or the server would refuse the request line.
                raise Error(
                    "the token holds a space, a line end or another character no token has "
                    "(CRUCIBLE_TOKEN, --token-file or client.json): give the token alone, as "
                    "`crucible token create` printed it"
                )
            self._headers["Authorization"] = f"Bearer {token}"
        self._local = threading.local()
        self._all: set[http.client.HTTPConnection] = set()
        self._all_lock = threading.Lock()

    @property
    def base_url(self) -> str:
        """The URL of the server requests go to now (the first of a list until it fails)."""
        return self._servers[self._current].url

    @property
    def urls(self) -> list[str]:
        """Every server URL this transport may use, in order."""
        return [s.url for s in self._servers]

    def _fail_over(self, index: int) -> None:
        """The server at ``index`` did not answer: new connections go to the next one."""
        if self._current == index:
            self._current = (index + 1) % len(self._servers)

    # -- connections ------------------------------------------------------------------------
    def _conn(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            index = self._current
            server = self._servers[index]
            if self._unix_socket is not None:
                conn = _unix_connection(server.https, self._unix_socket)(
                    server.host, server.port, timeout=self._timeout
                )
            else:
                cls = http.client.HTTPSConnection if server.https else http.client.HTTPConnection
                conn = cls(server.host, server.port, timeout=self._timeout)
            self._local.conn = conn
            self._local.index = index
            with self._all_lock:
                self._all.add(conn)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            with self._all_lock:
                self._all.discard(conn)

    def close_thread(self) -> None:
        """Close the calling thread's connection (a thread that is about to end)."""
        self._drop()

    def close(self) -> None:
        """Close every thread's connection."""
        with self._all_lock:
            conns, self._all = list(self._all), set()
        for conn in conns:
            conn.close()
        self._local = threading.local()

    # -- requests ---------------------------------------------------------------------------
    def request_raw(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        content_type: str = "application/json",
        timeout_s: float | None = None,
        retry: bool = True,
        retry_rate_limited: bool = False,
        idempotency_key: str | None = None,
    ) -> tuple[int, bytes]:
        """Send a request; return (status, body). Retries connection failures, and with
        ``retry_rate_limited`` (a request safe to repeat) a 429 after its Retry-After, both
        within ``retry_for_s``. A request that makes something anew carries
        ``idempotency_key`` (one is made when not given), so that sending it again is safe."""
        route = path.split("?", 1)[0]
        if "//" in route or (route.endswith("/") and route != "/"):
            # An empty id or name ('' on the command line) leaves an empty path segment,
            # which no route has (the server would answer a redirect or "no route").
            raise InvalidRequestError(f"{method} {route}: a name or an id in it is empty; give one")
        bad = next((ch for ch in path if ch <= " " or ch in "#\x7f"), None)
        if bad is not None:
            # A name or an id with a space (a pasted id), a '#': no object has one, and the
            # URL would be refused here (after 30 s of retries) or cut short at the server.
            raise InvalidRequestError(
                f"{method} {route!r}: a name or an id in it holds {bad!r}, which none has; "
                "check it (no spaces around it)"
            )
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = content_type
        window = self.retry_for_s if retry else 0.0
        # The retry window opens at the first failure: time a long poll spent waiting
        # before the server went away is not taken from it.
        deadline: float | None = None
        delay = 0.05
        failed_in_turn = 0  # servers that failed since the last backoff
        delivered = False  # sent whole at least once (the server may have done it)
        told = False  # on_wait was told of this request's wait
        once = False
        if method == "POST":
            if idempotency_key is None and _KEYED.match(route) is not None:
                idempotency_key = uuid.uuid4().hex
            once = idempotency_key is None and _SENT_ONCE.match(route) is not None
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        while True:
            conn = self._conn()
            if conn.sock is not None and _dropped(conn.sock):
                self._drop()
                conn = self._conn()
            url = self._servers[self._local.index].prefix + path
            sent = False
            try:
                if timeout_s is not None:
                    conn.timeout = timeout_s
                    if conn.sock is not None:
                        conn.sock.settimeout(timeout_s)
                conn.request(method, url, body=body, headers=headers)
                sent = True
                resp = conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self._drop()
                said = _unavailable(data) if resp.status in _GATEWAY_STATUSES else None
                if said is not None:
                    if resp.status == 503:
                        sent = False  # no replica took it (or one that could not commit it)
                    raise _GatewayUnavailable(
                        f"the server answered HTTP {resp.status}: {said}"
                        if said
                        else f"the load balancer answered HTTP {resp.status} (no replica behind "
                        "it took the request), or a replica whose database is not answering did"
                    )
                if resp.status == 429:
                    wait = _retry_after_s(resp.getheader("Retry-After"))
                    self._local.retry_after_s = wait
                    if deadline is None:
                        deadline = time.monotonic() + window
                    if retry_rate_limited and time.monotonic() + wait <= deadline:
                        time.sleep(wait)
                        continue
                return resp.status, data
            except _RETRYABLE as exc:
                delivered = delivered or sent
                failed = self._servers[self._local.index].url
                self._fail_over(self._local.index)
                self._drop()
                if once and sent:
                    raise ServerUnavailableError(
                        f"the server at {failed} went away after it received {method} {route} "
                        f"({exc}): it may have carried it out. Check (list what it would have "
                        "made) before sending it again"
                    ) from exc
                failed_in_turn += 1
                if isinstance(exc, socket.gaierror) and len(self._servers) == 1:
                    # A name that does not resolve will not in the next 30 s either.
                    raise ServerUnavailableError(
                        f"cannot reach the Crucible server at {failed}: its host name does not "
                        f"resolve ({exc}); is the URL right? (CRUCIBLE_SERVER_URL)"
                    ) from exc
                if isinstance(exc, ssl.SSLCertVerificationError) and len(self._servers) == 1:
                    # Nor will a certificate this machine does not trust: said so at once.
                    raise ServerUnavailableError(
                        f"the TLS certificate of the Crucible server at {failed} could not be "
                        f"verified ({exc.verify_message or exc}): if it is signed by your own "
                        "CA, point SSL_CERT_FILE at a bundle that holds it (docs/operators.md)"
                    ) from exc
                if retry and failed_in_turn < len(self._servers):
                    continue  # another replica next, at once
                if deadline is None:
                    deadline = time.monotonic() + window
                if time.monotonic() + delay > deadline:
                    where = failed if len(self._servers) == 1 else ", ".join(self.urls)
                    done = ""
                    if idempotency_key is not None and delivered:
                        # It reached a server once: it may be done, and only the same key
                        # makes sending it again safe.
                        done = (
                            f" It reached the server before: {method} {route} may have been "
                            "carried out; check (list what it would have made), or send it "
                            f"again with Idempotency-Key {idempotency_key} (kept 24 hours)."
                        )
                    raise ServerUnavailableError(
                        f"cannot reach the Crucible server at {where} ({exc}); "
                        + _unreachable_advice(self.urls, exc)
                        + done
                    ) from exc
                failed_in_turn = 0
                if self.on_wait is not None and not told:
                    told = True
                    left = max(0.0, deadline - time.monotonic())
                    self.on_wait(
                        f"cannot reach the Crucible server at {failed} ({exc}); trying again "
                        f"for {left:.0f} s (Ctrl-C to stop)"
                    )
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            finally:
                if timeout_s is not None and getattr(self._local, "conn", None) is not None:
                    self._local.conn.timeout = self._timeout

    def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        timeout_s: float | None = None,
        retry: bool = True,
        retry_rate_limited: bool = False,
        idempotency_key: str | None = None,
    ) -> Any:
        try:
            body = None if json is None else orjson.dumps(json)
        except TypeError as exc:  # an int past 64 bits (a typo), or a value JSON cannot hold
            raise InvalidRequestError(
                f"the request to {path} holds a value JSON cannot carry ({exc}); integers must "
                "fit in 64 bits (the server takes at most 2**53)"
            ) from None
        status, data = self.request_raw(
            method,
            path,
            body,
            timeout_s=timeout_s,
            retry=retry,
            retry_rate_limited=retry_rate_limited,
            idempotency_key=idempotency_key,
        )
        try:
            return self._decode(status, data)
        except RateLimitedError as exc:
            exc.retry_after_s = getattr(self._local, "retry_after_s", exc.retry_after_s)
            raise

    @staticmethod
    def _decode(status: int, data: bytes) -> Any:
        if 200 <= status < 300:
            return orjson.loads(data) if data else None
        try:
            err = orjson.loads(data)["error"]
            raise error_from_wire(err["code"], err["message"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            if status == 401:
                raise AuthError("the server refused the token") from None
            text = data[:500].decode("utf-8", "replace")
            raise Error(f"server answered HTTP {status}: {text}") from None

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, {} if json is None else json, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)


def _retry_after_s(value: str | None) -> float:
    """Seconds a Retry-After header asks for (delta-seconds; 1 s when absent or a date)."""
    try:
        return min(max(float(value or 1), 0.0), 3600.0)
    except ValueError:
        return 1.0


def _unix_connection(https: bool, path: str) -> type[http.client.HTTPConnection]:
    """An HTTP(S) connection class whose socket is the Unix socket at ``path``."""
    base = http.client.HTTPSConnection if https else http.client.HTTPConnection

    class UnixConnection(base):  # type: ignore[valid-type,misc]
        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(path)
            if https:
                self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
            else:
                self.sock = sock

    return UnixConnection
