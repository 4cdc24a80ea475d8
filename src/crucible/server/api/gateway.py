"""The web gateway: ``/web/{account}/{deployment}/{function}/...`` serves a deployed web
endpoint (``@crucible.fastapi_endpoint`` / ``@crucible.asgi_app``).

An HTTP request goes straight to a warm container of the deployment's current version when
one has a free slot on its web channel or is waiting for work (server/web_channel.py,
server/web_relay.py: in memory, no call row); otherwise (scale from
zero, every container busy) it becomes a call (queued, autoscaled, metered and logged like
any other). Either way the container runs it through the function's ASGI app and the
response streams back as it is produced. Unless the endpoint is public, the request
needs a token of the deployment's account (``Authorization: Bearer``), which is not passed
on to the app. Every response carries ``x-crucible-call-id``: the error id an endpoint's
owner looks up (``crucible logs``; ``crucible call`` for a call, ``ca-...``; a relayed
request's id is ``rq-...``) when it answers 500.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocketState

from crucible.errors import AuthError, BadGatewayError, Error, FunctionTimeoutError, NotFoundError
from crucible.protocol import json_payload
from crucible.protocol.calls import CallsCreate, InputItem, ItemsPage
from crucible.protocol.common import Payload
from crucible.protocol.web import decode_response
from crucible.server.api.calls import check_credit, submit_calls
from crucible.server.api.items import read_page
from crucible.server.api.responses import error_response
from crucible.server.api.web_origin import OWN_HOST, own_host_reason, to_own_host
from crucible.server.auth import Principal
from crucible.server.own_cookies import OWN_COOKIES, cookie_name, cookies_but_ours
from crucible.server.services import items as items_svc
from crucible.server.services.accounts import authenticate
from crucible.server.services.blobs import grant_blob
from crucible.server.services.deployments import current_function
from crucible.server.state import ServerState
from crucible.server.store.tables import accounts
from crucible.server.wakeups import long_poll
from crucible.server.web_relay import (
    BODY_BEFORE_START,
    NO_RESPONSE,
    NO_VALID_RESPONSE,
    RelayedResponse,
    relayed_response,
)

router = APIRouter(tags=["web"])
log = logging.getLogger("crucible.gateway")

# Not passed to the app: the caller's token, hop-by-hop headers, and forwarding headers the
# client sent (the gateway writes its own, so an app can trust them). Names are compared
# with ``_`` read as ``-``: a WSGI app behind an ASGI adapter sees ``X_Forwarded_For`` and
# ``X-Forwarded-For`` as the same ``HTTP_X_FORWARDED_FOR``. Every ``X-Forwarded-*`` goes,
# and RFC 7239's ``Forwarded`` and ``X-Real-IP``, which frameworks read as well.
_HOP = {
    "authorization",
    "connection",
    "content-length",
    "transfer-encoding",
    "forwarded",
    "x-real-ip",
}
_FORWARDING = "x-forwarded-"
# Framing headers an app's response may not set: the gateway frames the body itself (an
# app's Transfer-Encoding beside the gateway's Content-Length is a smuggling risk).
_FRAMING = {"content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer"}
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9a-z]+$")  # a header name (lowercased)
_NO_BODY = (204, 304)
# An endpoint that ran past its function's timeout answers 504, as a gateway whose upstream
# timed out does (clients and balancers retry 502/503/504, not 500).
TIMEOUT = FunctionTimeoutError.code
_FIRST_PART_WAIT_S = 300.0
# A WebSocket client's message is at most this big (websockets' own default; larger ones
# close the connection with 1009), and it may be at most this many messages ahead of the app.
WS_MESSAGE_MAX_BYTES = 1024 * 1024
WS_INBOX_WINDOW = 64
# A resolved endpoint is reused this long: a deployment changed through this server is seen
# at once (the routes clear the cache), one changed through another replica within this.
_ENDPOINT_TTL_S = 1.0
_ENDPOINTS_MAX = 10_000


def _limit(state: ServerState, authorization: str | None, client: str) -> None:
    """Count one submit against the caller's token (429 past the submit rate); anonymous
    callers of public endpoints are counted per client address."""
    caller = None
    if authorization:
        # Valid here: a private endpoint checked it; a public one may be sent any header.
        with contextlib.suppress(Error):
            caller = authenticate(state, authorization)
    if caller is None:
        caller = Principal(account_id=f"anonymous@{client}", scope="anonymous")
    state.limits.take(state.limits.submit, caller)


def _endpoint(
    state: ServerState, account: str, deployment: str, function: str, authorization: str | None
) -> tuple[Principal, Any]:
    """The endpoint's owner and function row.

    Only a builder (or admin) token of the endpoint's account is told what is wrong (no such
    deployment, version or function; not a web endpoint; the deployment stopped). Everyone
    else gets one answer for everything that is not a public endpoint, so that nobody learns
    which accounts, deployments and functions exist: without a valid token, 401 (a private
    endpoint needs one); with another account's token, 404; the same message either way."""
    caller = _caller(state, authorization)
    key = (account, deployment, function)
    known = state.web.endpoints.get(key)
    if known is not None and known[0] > time.monotonic():
        owner = Principal(account_id=known[1], scope="user")
        fn = known[2]
    else:
        owner, fn = _resolve(state, caller, account, deployment, function)
    authorised = _authorised(caller, owner)
    web = fn.spec.web
    if not web:
        if authorised:
            raise NotFoundError(f"{deployment}.{function} is not a web endpoint")
        raise _unseen(caller, *key)
    if not web.get("public") and not authorised:
        raise _unseen(caller, *key)
    if known is None or known[2] is not fn:
        if len(state.web.endpoints) >= _ENDPOINTS_MAX:
            state.web.endpoints.clear()
        state.web.endpoints[key] = (time.monotonic() + _ENDPOINT_TTL_S, owner.account_id, fn)
    return owner, fn


def _unseen(caller: Principal | None, account: str, deployment: str, function: str) -> Error:
    """The one answer for an endpoint this caller may not use or learn about."""
    message = _UNSEEN.format(account, deployment, function)
    return AuthError(message) if caller is None else NotFoundError(message)


def _authorised(caller: Principal | None, owner: Principal) -> bool:
    """Whether ``caller`` is told what is wrong with the owner's endpoints."""
    return (
        caller is not None
        and caller.account_id == owner.account_id
        and caller.scope in ("admin", "user")
    )


def _resolve(
    state: ServerState,
    caller: Principal | None,
    account: str,
    deployment: str,
    function: str,
) -> tuple[Principal, Any]:
    """The endpoint's owner and its current function row, read from the store."""
    with state.engine.connect() as conn:  # one connection for both lookups
        account_id = conn.execute(select(accounts.c.id).where(accounts.c.name == account)).scalar()
        if account_id is None:
            raise _unseen(caller, account, deployment, function)
        owner = Principal(account_id=str(account_id), scope="user")
        try:
            return owner, current_function(conn, owner, deployment, function)
        except NotFoundError:
            if _authorised(caller, owner):
                raise
            raise _unseen(caller, account, deployment, function) from None


def _from_client(name: str) -> bool:
    """Whether the client's header ``name`` (lowercased) reaches the app: not one of
    :data:`_HOP` nor a forwarding header, in any spelling."""
    canonical = name.replace("_", "-")
    return canonical not in _HOP and not canonical.startswith(_FORWARDING)


def _client(address: Any) -> str:
    return str(address.host) if address is not None else "unknown"


def raw_tail(conn: HTTPConnection, path: str) -> str:
    """The request's path as the client wrote it (percent-escapes kept, as ASGI's
    ``raw_path``), from where the app is mounted, as Latin-1 text; ``/`` + ``path`` when the
    server has no raw path."""
    raw: bytes | None = conn.scope.get("raw_path")
    if not raw:
        return "/" + path
    if OWN_HOST not in conn.scope and raw.startswith(b"/web/"):
        parts = raw.split(b"/", 5)  # "", "web", account, deployment, function, the rest
        raw = b"/" + (parts[5] if len(parts) > 5 else b"")
    return raw.decode("latin-1")


def forwarded_headers(
    conn: HTTPConnection, account: str, deployment: str, function: str
) -> list[list[str]]:
    """The request's headers as the app sees them, as a reverse proxy passes them: the
    ``Host`` the client used, and ``X-Forwarded-For`` (the client's address),
    ``-Host``, ``-Proto`` and, when served at the exchange's path, ``-Prefix`` (the path
    the app is mounted at, ``/web/{account}/{deployment}/{function}``), so that the app can
    build its own public URLs. Never the caller's token, nor a forwarding header the client
    sent (``X-Forwarded-*``, ``Forwarded``, ``X-Real-IP``, spelt with ``-`` or ``_``)."""
    out = [[k, v] for k, v in conn.headers.items() if _from_client(k) and k != "cookie"]
    # The visitor's cookies for the app, never the exchange's own (the console's session:
    # the app would act as the visitor with it).
    cookie = cookies_but_ours(conn.headers.get("cookie"))
    if cookie:
        out.append(["cookie", cookie])
    out.append(["x-forwarded-for", _client(conn.client)])
    host = conn.headers.get("host")
    if host:
        out.append(["x-forwarded-host", host])
    scheme = str(conn.scope.get("scheme", "http"))
    out.append(["x-forwarded-proto", {"ws": "http", "wss": "https"}.get(scheme, scheme)])
    if OWN_HOST not in conn.scope:
        out.append(["x-forwarded-prefix", f"/web/{account}/{deployment}/{function}"])
    return out


_UNSEEN = (
    "no web endpoint at /web/{}/{}/{} that this request may use: check the URL, and send a "
    "token of the endpoint's account ('Authorization: Bearer <token>') unless it is public"
)


def _caller(state: ServerState, authorization: str | None) -> Principal | None:
    """The request's token holder; None without a token or with one the server does not
    know."""
    if not authorization:
        return None
    try:
        return authenticate(state, authorization)
    except AuthError:
        return None


def response_parts(items: list[Payload]) -> list[dict[str, Any]]:
    """A web call's items decoded: the response's start, then its body parts."""
    return [json_payload.decode(base64.b64decode(p.data or "")) for p in items]


@router.api_route(
    "/web/{account}/{deployment}/{function}/{path:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
    include_in_schema=False,  # the endpoints' own apps define what is under it
)
async def gateway(
    account: str, deployment: str, function: str, path: str, request: Request
) -> Response:
    state: ServerState = request.app.state.crucible
    # Counted first: requests for endpoints that do not exist cost the sender too.
    _limit(state, request.headers.get("authorization"), _client(request.client))
    owner, fn = _endpoint(
        state, account, deployment, function, request.headers.get("authorization")
    )
    if state.settings.ports_domain:  # a browser's request goes to the endpoint's own host
        moved = to_own_host(state, request, fn, path)
        if moved is not None:
            return moved
    body = await request.body()
    http = {
        "method": request.method,
        "path": "/" + path,
        "raw_path": raw_tail(request, path),
        "query": request.scope["query_string"].decode("latin-1"),
        "headers": forwarded_headers(request, account, deployment, function),
    }
    relayed = await relay(state, owner, fn, http, body)
    if relayed is not None:
        return _relayed(state, relayed, request.method)
    raw = request_payload(http, body)
    call_id = await _submit(
        state, owner, fn, raw, (account, deployment, function), request.headers.get("authorization")
    )
    page = await read_page(state, owner, call_id, 0, _FIRST_PART_WAIT_S, submitted=True)
    whole = held_response(page) if page.done and not page.items else None
    if whole is not None and "status" not in whole[0]:
        return _no_response(BODY_BEFORE_START, call_id)
    if whole is not None and request.method != "HEAD":
        start = whole[0]
        body = b"".join(base64.b64decode(p["body"]) for p in whole[1:] if "body" in p)
        return _plain_response(start["status"], start["headers"], body, call_id)
    if not page.items and whole is None and page.call.state == "succeeded":
        return _no_response(NO_RESPONSE, call_id)  # the app returned, having sent nothing
    if not page.items and whole is None:
        code = page.call.error.code if page.call.error else "endpoint_error"
        return JSONResponse(
            {
                "error": {
                    "code": code,
                    "message": f"the endpoint did not answer (call {call_id} "
                    f"{page.call.state}); its owner sees why with `crucible call {call_id}`",
                }
            },
            status_code=504 if page.call.state == "queued" or code == TIMEOUT else 500,
            headers={"x-crucible-call-id": call_id},
        )
    parts = whole if whole is not None else response_parts(page.items)
    start = parts[0]
    if "status" not in start:
        return _no_response(BODY_BEFORE_START, call_id)

    async def stream() -> AsyncIterator[bytes]:
        nonlocal page, parts
        pending = parts[1:]
        while True:
            for part in pending:
                if "body" in part:
                    yield base64.b64decode(part["body"])
            if page.done:
                return
            page = await read_page(state, owner, call_id, page.next, 30.0)
            pending = response_parts(page.items)

    return _streamed_response(start["status"], start["headers"], call_id, stream())


async def _submit(
    state: ServerState,
    owner: Principal,
    fn: Any,
    raw: bytes,
    names: tuple[str, str, str],
    authorization: str | None,
) -> str:
    """Submit the request as a call of ``fn``; its id. A function that went away since it
    was resolved (a cached endpoint, changed through another replica) is resolved afresh, so
    the caller gets the answer :func:`_endpoint` gives."""
    req = CallsCreate(inputs=[InputItem(args=await request_input(state, owner, raw))])
    try:
        return (await submit_calls(fn.id, req, owner, state, on_behalf=True)).call_ids[0]
    except NotFoundError:
        state.web.endpoints.pop(names, None)
        owner, fresh = _endpoint(state, *names, authorization)
        if fresh.id == fn.id:
            caller = _caller(state, authorization)
            if _authorised(caller, owner):
                raise
            raise _unseen(caller, *names) from None
        return (await submit_calls(fresh.id, req, owner, state, on_behalf=True)).call_ids[0]


def held_response(page: ItemsPage) -> list[dict[str, Any]] | None:
    """The response a finished call carries in its output (see protocol/web.py), if any."""
    result = page.call.result
    if page.call.state != "succeeded" or result is None or result.data is None:
        return None
    parts = decode_response(base64.b64decode(result.data))
    return parts or None


def _plain_response(status: Any, headers: Any, body: bytes, call_id: str) -> Response:
    """A whole response in one piece, with its length; every header the app set is kept
    (repeated ones too), but those :func:`app_headers` leaves out. A 502 (with the call's
    id) when HTTP cannot carry the app's status or headers."""
    try:
        status, raw_headers = app_status(status), app_headers(headers, call_id)
    except BadGatewayError as exc:
        return _bad_gateway(exc, call_id)
    response = Response(b"" if status in _NO_BODY else body, status_code=status)
    response.raw_headers.extend(raw_headers)
    return response


def _streamed_response(
    status: Any, headers: Any, call_id: str, body: AsyncIterator[bytes]
) -> Response:
    """A response whose body comes in parts (chunked), with the app's headers as
    :func:`app_headers` keeps them; a 502 as :func:`_plain_response` says (``body`` is
    then not read: a caller that must drop its rest checks with :func:`app_status` and
    :func:`app_headers` first)."""
    try:
        status, raw_headers = app_status(status), app_headers(headers, call_id)
    except BadGatewayError as exc:
        return _bad_gateway(exc, call_id)
    if status in _NO_BODY:
        return _plain_response(status, headers, b"", call_id)
    response = StreamingResponse(body, status_code=status)
    response.raw_headers.extend(raw_headers)
    return response


def _bad_gateway(exc: BadGatewayError, call_id: str) -> Response:
    """The 502 for an answer of the app's that no HTTP response can carry, with the id its
    owner looks up, as every answer of the endpoint has."""
    response = error_response(exc)
    response.headers["x-crucible-call-id"] = call_id
    return response


def _no_response(why: str, call_id: str) -> Response:
    """The 502 for an app that sent no valid response (``why``: what it did instead; the
    worker wrote the same to the app's logs)."""
    return _bad_gateway(
        BadGatewayError(
            f"the endpoint's app {why}, so there is no response to pass on; its owner sees "
            f"this in `crucible logs` ({call_id})"
        ),
        call_id,
    )


def app_status(status: Any) -> int:
    """The app's status code, when an HTTP response can carry it."""
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise BadGatewayError(
            f"the endpoint's app answered with status {str(status)[:20]!r}; a response's "
            "status is from 200 to 599"
        )
    return status


def _unfit(name: str) -> BadGatewayError:
    return BadGatewayError(
        f"the endpoint's app answered a header HTTP cannot carry ({name[:40]!r}: a name of "
        "letters, digits and !#$%&'*+-.^_`|~, a value without CR, LF or NUL, both in Latin-1)"
    )


def app_headers(headers: Any, call_id: str) -> list[tuple[bytes, bytes]]:
    """The app's response headers as the gateway passes them on: its framing headers
    (``Content-Length``, ``Transfer-Encoding``...) left out, since the gateway frames the
    body itself; a ``Set-Cookie`` of the exchange's own cookies left out; and the call's id
    added. A name or value HTTP cannot carry (CR, LF, NUL) is a :class:`BadGatewayError`."""
    out: list[tuple[bytes, bytes]] = []
    for k, v in headers:
        name, value = str(k), str(v)
        low = name.lower()
        if low in _FRAMING or (low == "set-cookie" and cookie_name(value) in OWN_COOKIES):
            continue
        try:
            raw = (low.encode("latin-1"), value.encode("latin-1"))
        except UnicodeEncodeError:
            raise _unfit(name) from None
        if not _TOKEN.match(raw[0]) or any(c in raw[1] for c in (0, 10, 13)):
            raise _unfit(name)
        out.append(raw)
    out.append((b"x-crucible-call-id", call_id.encode("ascii")))
    return out


async def request_input(state: ServerState, owner: Principal, raw: bytes) -> Payload:
    """A web request's input (``raw``, from :func:`request_payload`) for a call: inline, or
    over the inline limit a blob of the endpoint owner's (granted first, so that blob
    collection keeps it), as the SDK sends large arguments."""
    if len(raw) <= state.settings.inline_payload_max_bytes:
        return Payload.inline(raw)
    sha = hashlib.sha256(raw).hexdigest()
    with state.engine.begin() as conn:
        grant_blob(conn, owner.account_id, sha, len(raw), state.clock.now_ms())
    await asyncio.to_thread(state.blobs.put, raw, sha)
    return Payload(ref=sha, size=len(raw))


def request_payload(http: dict[str, Any], body: bytes) -> bytes:
    """A web request as a call's input (JSON payload): ``http`` with its body in base64."""
    whole = {**http, "body": base64.b64encode(body).decode("ascii")}
    return json_payload.encode({"args": [whole], "kwargs": {}})


async def relay(
    state: ServerState, owner: Principal, fn: Any, http: dict[str, Any], body: bytes
) -> RelayedResponse | None:
    """The fast path (server/web_relay.py): the request (``http``: method, path, query,
    headers; and its ``body``) handed to a warm container of ``fn`` on its web channel
    (server/web_channel.py) when one has a free slot, else to one parked on its exchange,
    and the start of its answer. None when no container is free, or the one taken went away
    before it took the request: then the caller submits a call. The owner's credit is
    checked as for a call."""
    if not state.settings.web_relay or state.web.other_replicas:
        return None  # off, or replicas: the container's next requests may reach another
    if getattr(fn, "app_state", "running") != "running":
        return None  # a superseded version: a call is forwarded to the current one
    timeout_s = fn.spec.timeout_s
    channels = state.web.channels
    channel = channels.free(fn.id)
    now = state.clock.now_ms()
    if channel is not None:
        check_credit(state, owner, now, on_behalf=True)
        relayed = await channels.hand(channel, owner.account_id, http, body, timeout_s)
    elif channels.serves(fn.id):
        return None  # every channel is full: a call waits for the first free container
    else:
        raw = request_payload(http, body)
        if len(raw) > state.settings.inline_payload_max_bytes:
            return None  # a call stores it as a blob
        check_credit(state, owner, now, on_behalf=True)
        handed = state.web.relay.hand(state.dispatcher, fn.id, owner.account_id, raw, timeout_s)
        if handed is None:
            return None
        relayed = handed
    state.observations.observe_arrivals(fn.id, 1, now)
    return await relayed_response(relayed)


def _relayed(state: ServerState, answer: RelayedResponse, method: str) -> Response:
    """The gateway's response to a relayed request."""
    rid = answer.call_id
    if answer.status is None and answer.error_code == BadGatewayError.code:
        if answer.relayed is not None:  # what the app sends after it is dropped
            state.web.relay.abandon(answer.relayed)
        return _no_response(answer.reason or NO_VALID_RESPONSE, rid)
    if answer.status is None:
        lost = answer.state == "lost"
        why = (
            "no answer from its container within the function's timeout"
            if lost
            else f"request {answer.state}"
        )
        return JSONResponse(
            {
                "error": {
                    "code": answer.error_code or "endpoint_error",
                    "message": f"the endpoint did not answer ({why}); its owner sees why with "
                    f"`crucible logs` (request {rid})",
                }
            },
            status_code=504 if lost or answer.error_code == TIMEOUT else 500,
            headers={"x-crucible-call-id": rid},
        )
    if answer.whole is not None and method != "HEAD":
        return _plain_response(answer.status, answer.headers, answer.whole, rid)
    relayed = answer.relayed
    try:
        app_status(answer.status)
        app_headers(answer.headers, rid)
    except BadGatewayError as exc:  # the body will not be read: drop what comes
        if relayed is not None:
            state.web.relay.abandon(relayed)
        return _bad_gateway(exc, rid)

    async def stream() -> AsyncIterator[bytes]:
        done = False
        try:
            async for chunk in answer.body:
                yield chunk
            done = True
        finally:
            if not done and relayed is not None:  # the client left: drop the rest
                state.web.relay.abandon(relayed)

    return _streamed_response(answer.status, answer.headers, rid, stream())


@router.websocket("/web/{account}/{deployment}/{function}/{path:path}")
async def gateway_websocket(
    websocket: WebSocket, account: str, deployment: str, function: str, path: str
) -> None:
    """A WebSocket to a deployed ``asgi_app``: the connection is one call; what the client
    sends goes to the call's inbox, what the app sends comes back through its items."""
    state: ServerState = websocket.app.state.crucible
    try:
        _limit(state, websocket.headers.get("authorization"), _client(websocket.client))
        owner, fn = _endpoint(
            state, account, deployment, function, websocket.headers.get("authorization")
        )
        elsewhere = own_host_reason(state, websocket, fn, path)
        if elsewhere is not None:
            await websocket.close(code=1008, reason=elsewhere)
            return
    except Error as exc:
        log.info("websocket to %s/%s refused: %s", deployment, function, exc.message)
        await _refuse(websocket, exc)
        return
    offered = [str(p) for p in websocket.scope.get("subprotocols", [])]
    http = {
        "type": "websocket",
        "path": "/" + path,
        "raw_path": raw_tail(websocket, path),
        "query": websocket.url.query,
        "headers": forwarded_headers(websocket, account, deployment, function),
        "subprotocols": offered,  # the client's Sec-WebSocket-Protocol, for the app's scope
    }
    raw = json_payload.encode({"args": [http], "kwargs": {}})
    created = await submit_calls(
        fn.id,
        CallsCreate(inputs=[InputItem(args=Payload.inline(raw))]),
        owner,
        state,
        on_behalf=True,
    )
    call_id = created.call_ids[0]

    posted = 0  # messages in the inbox

    def post(message: dict[str, Any]) -> None:
        nonlocal posted
        with state.engine.begin() as conn:
            posted = items_svc.append_inbox(conn, call_id, [orjson.dumps(message).decode()])
        state.wakeups.notify_many([f"inbox:{call_id}"])

    def caught_up() -> bool | None:
        return True if posted - state.calls.inbox_read.get(call_id, 0) < WS_INBOX_WINDOW else None

    async def from_client() -> None:
        while True:
            # Back-pressure: a client far ahead of the app is not read (TCP holds it back)
            # until the worker has taken its messages; the store holds a window, not a flood.
            while not caught_up():
                await long_poll(state.wakeups, [f"inboxread:{call_id}"], caught_up, 30.0)
            msg = await websocket.receive()
            if msg["type"] == "websocket.disconnect":
                gone = {"code": msg.get("code", 1000), "reason": msg.get("reason") or ""}
                await run_in_threadpool(post, {"type": "disconnect", **gone})
                return
            data = msg.get("bytes")
            text = msg.get("text") or ""
            if len(data if data is not None else text.encode()) > WS_MESSAGE_MAX_BYTES:
                await run_in_threadpool(post, {"type": "disconnect", "code": 1009})
                await websocket.close(
                    code=1009, reason=f"a message is at most {WS_MESSAGE_MAX_BYTES} bytes"
                )
                return
            if data is not None:
                part = {"type": "receive", "bytes": base64.b64encode(data).decode()}
            else:
                part = {"type": "receive", "text": text}
            await run_in_threadpool(post, part)

    async def to_client() -> None:
        after = 0
        accepted = False
        while True:
            page = await read_page(state, owner, call_id, after, 30.0)
            after = page.next
            for part in response_parts(page.items):
                kind = part.get("ws")
                if kind == "accept" and not accepted:
                    await websocket.accept(
                        subprotocol=_chosen(part.get("subprotocol"), offered, call_id),
                        headers=[(b"x-crucible-call-id", call_id.encode())],
                    )
                    accepted = True
                elif kind == "send" and accepted:
                    if "bytes" in part:
                        await websocket.send_bytes(base64.b64decode(part["bytes"]))
                    else:
                        await websocket.send_text(part.get("text", ""))
                elif kind == "close":
                    reason = _close_reason(part.get("reason"))
                    await websocket.close(code=int(part.get("code", 1000)), reason=reason)
                    return
            if page.done:
                await websocket.close(code=1011 if page.call.state != "succeeded" else 1000)
                return

    try:
        await _relay_websocket(websocket, call_id, to_client, from_client)
    finally:
        state.calls.inbox_read.pop(call_id, None)


async def _relay_websocket(
    websocket: WebSocket,
    call_id: str,
    to_client: Callable[[], Awaitable[None]],
    from_client: Callable[[], Awaitable[None]],
) -> None:
    outgoing = asyncio.ensure_future(to_client())
    # The client's messages are read only once the app accepted the connection.
    while not outgoing.done() and websocket.application_state != WebSocketState.CONNECTED:
        await asyncio.sleep(0.01)
    if outgoing.done():
        if outgoing.exception() is not None:
            log.error("websocket %s failed: %r", call_id, outgoing.exception())
        return
    incoming = asyncio.ensure_future(from_client())
    done, pending = await asyncio.wait({outgoing, incoming}, return_when=asyncio.FIRST_COMPLETED)
    if incoming in done and not outgoing.done():
        # The client left: the app sees the disconnect; let its side finish briefly.
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(outgoing, 5.0)
    for task in pending:
        task.cancel()


async def _refuse(websocket: WebSocket, exc: Error) -> None:
    """Refuse a WebSocket before its handshake with the API's error (its status and JSON
    body, as a plain request to the same URL gets), where the server can send one; else
    close it, which the client sees as a bare 403."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error_response(exc))
    else:
        await websocket.close(code=1008, reason=exc.message[:120])


def _chosen(subprotocol: Any, offered: list[str], call_id: str) -> str | None:
    """The subprotocol the app accepted the WebSocket with, for the handshake's answer: one
    the client offered (a client fails a handshake that names another), else none."""
    if subprotocol is None:
        return None
    if subprotocol in offered:
        return str(subprotocol)
    log.info(
        "websocket %s: the app chose subprotocol %r, which the client did not offer (%s); "
        "answered without one",
        call_id,
        str(subprotocol)[:60],
        ", ".join(offered) or "none",
    )
    return None


def _close_reason(reason: Any) -> str | None:
    """The app's close reason as a close frame carries it: at most 123 bytes of UTF-8."""
    if not isinstance(reason, str) or not reason:
        return None
    return reason.encode("utf-8")[:123].decode("utf-8", "ignore")
