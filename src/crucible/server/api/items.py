"""Generator calls: workers send what the function yields; callers read it as it comes.

Back-pressure: a worker that is more than :data:`WINDOW` items ahead of its caller waits
(its request is held up to 10 s, then it asks again) until the caller has read more.
"""

from __future__ import annotations

import base64
import binascii

from fastapi import APIRouter, Query

from crucible.errors import InvalidRequestError, NotFoundError
from crucible.protocol.calls import ItemsAck, ItemsPage, ItemsSent
from crucible.protocol.common import MAX_WIRE_INT, Payload, wire_count
from crucible.server.api.deps import CallMaker, Container, State
from crucible.server.auth import Principal
from crucible.server.services import items as svc
from crucible.server.services.blobs import require_blob
from crucible.server.state import ServerState
from crucible.server.wakeups import long_poll

router = APIRouter(prefix="/v1", tags=["calls"])

WINDOW = 256
# Wake-up keys that carry a caller's read count to the other replicas: "consumed=CALL:N".
CONSUMED_PREFIX = "consumed="
# And a worker's read position in a WebSocket's inbox: "inboxread=CALL:N".
INBOX_READ_PREFIX = "inboxread="
# Counts learnt from other replicas are kept for this many calls at most (oldest go first):
# the replica the caller reads through forgets a call when it ends, the others cannot tell.
_SHARED_MAX = 100_000


def share_consumption(state: ServerState) -> None:
    """Take in what callers read through other replicas (:func:`read_page` shares it), so
    a worker sending through this one is held back, or let go, by the real count; and how
    far workers read WebSocket inboxes (:func:`get_inbox`), for the gateway's clients."""

    def apply(value: str) -> None:
        call_id, _, after = value.rpartition(":")
        n = wire_count(after)
        if n is not None and note_progress(state.calls.items_consumed, call_id, n):
            state.wakeups.notify_local([f"consumed:{call_id}"])

    def apply_inbox(value: str) -> None:
        call_id, _, after = value.rpartition(":")
        n = wire_count(after)
        if n is not None and note_progress(state.calls.inbox_read, call_id, n):
            state.wakeups.notify_local([f"inboxread:{call_id}"])

    state.wakeups.on_remote(CONSUMED_PREFIX, apply)
    state.wakeups.on_remote(INBOX_READ_PREFIX, apply_inbox)


def note_progress(counts: dict[str, int], call_id: str, n: int) -> bool:
    """Raise ``counts[call_id]`` to ``n`` (never lower it), keeping at most
    :data:`_SHARED_MAX` calls; whether it rose."""
    if n <= counts.get(call_id, 0):
        return False
    if call_id not in counts and len(counts) >= _SHARED_MAX:
        del counts[next(iter(counts))]
    counts[call_id] = n
    return True


@router.post("/containers/{container_id}/items")
async def post_items(container_id: str, req: ItemsSent, who: Container, state: State) -> ItemsAck:
    if who.container_id != container_id:
        raise NotFoundError(f"container {container_id} not found")
    relayed = state.web.relay.get(req.call_id, container_id)
    if relayed is not None:  # a relayed web request's response: in memory, no rows
        data = [relay_bytes(state, who.account_id, p) for p in req.items]
        state.web.relay.items(relayed, req.start, data)
        return ItemsAck(consumed=await state.web.relay.caught_up(relayed, 10.0))
    with state.engine.begin() as conn:
        svc.store_items(
            conn,
            container_id,
            who.account_id,
            req,
            state.settings.inline_payload_max_bytes,
        )
    state.wakeups.notify_many([f"items:{req.call_id}"])
    sent = req.start + len(req.items)

    def caught_up() -> int | None:
        consumed = state.calls.items_consumed.get(req.call_id, 0)
        return consumed if sent - consumed <= WINDOW else None

    consumed = caught_up()
    if consumed is None:
        consumed = await long_poll(state.wakeups, [f"consumed:{req.call_id}"], caught_up, 10.0)
    return ItemsAck(consumed=consumed if consumed is not None else -1)


def relay_bytes(state: ServerState, account_id: str, payload: Payload) -> bytes:
    """What a worker's payload for a relayed web request holds: inline, or a blob of the
    worker's account (a blob of anyone else is refused as for a call's items)."""
    if payload.ref is not None:
        with state.engine.connect() as conn:
            require_blob(conn, account_id, payload.ref)
        return state.blobs.get(payload.ref)
    if payload.data is None:
        raise InvalidRequestError("a payload needs 'data' (base64) or 'ref' (a blob's sha256)")
    try:
        return base64.b64decode(payload.data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError("payload 'data' is not valid base64") from None


@router.get("/calls/{call_id}/items")
async def get_items(
    call_id: str,
    who: CallMaker,
    state: State,
    after: int = Query(default=0, ge=0, le=MAX_WIRE_INT),
    wait_s: float = Query(default=0.0, ge=0, le=60, allow_inf_nan=False),
) -> ItemsPage:
    """Items from index ``after`` on; with ``wait_s``, wait for some (or the end). Reading
    from ``after`` tells the worker the caller has everything before it."""
    return await read_page(state, who, call_id, after, wait_s)


async def read_page(
    state: ServerState,
    who: Principal,
    call_id: str,
    after: int,
    wait_s: float,
    *,
    submitted: bool = False,
) -> ItemsPage:
    """The items route's work (the web gateway reads a response through it too).

    ``submitted``: the caller created the call just now without yielding to the event loop
    since, so nothing can have been sent yet: the first read is skipped and the wait starts
    at once (a read less per request)."""

    def consumed() -> None:
        if note_progress(state.calls.items_consumed, call_id, after):
            state.wakeups.notify_local([f"consumed:{call_id}"])
            # The worker may be sending through another replica: it needs the count itself.
            state.wakeups.share(CONSUMED_PREFIX, f"{call_id}:{after}")

    def read() -> ItemsPage:
        with state.engine.connect() as conn:
            return svc.read_items(conn, who, call_id, after)

    def fresh() -> ItemsPage | None:
        newer = read()
        return newer if newer.items or newer.done else None

    keys = [f"items:{call_id}", f"call:{call_id}"]
    if submitted and wait_s > 0:
        consumed()  # the caller made this call just now: it is the caller's
        found = await long_poll(state.wakeups, keys, fresh, wait_s, checked=True)
        page = found or read()
    else:
        # Read first: another account's call (or an id nobody has) is not found before its
        # worker is told anything, and no count is kept for an id the caller does not own.
        page = read()
        consumed()
        if not (page.items or page.done or wait_s <= 0):
            page = await long_poll(state.wakeups, keys, fresh, wait_s) or page
    if page.done:
        state.calls.items_consumed.pop(call_id, None)
    return page


@router.get("/containers/{container_id}/calls/{call_id}/inbox")
async def get_inbox(
    container_id: str,
    call_id: str,
    who: Container,
    state: State,
    after: int = Query(default=0, ge=0, le=MAX_WIRE_INT),
    wait_s: float = Query(default=0.0, ge=0, le=60, allow_inf_nan=False),
) -> list[str]:
    """What a WebSocket's client sent (JSON messages) from index ``after``; with
    ``wait_s``, wait for some."""
    if who.container_id != container_id:
        raise NotFoundError(f"container {container_id} not found")

    def read() -> list[str] | None:
        with state.engine.connect() as conn:
            found = svc.read_inbox(conn, container_id, call_id, after)
        return found or None

    got = read()
    # Asking from ``after`` says everything before it was taken: the gateway may read more
    # from the client (it may be another replica's).
    if note_progress(state.calls.inbox_read, call_id, after):
        state.wakeups.notify_local([f"inboxread:{call_id}"])
        state.wakeups.share(INBOX_READ_PREFIX, f"{call_id}:{after}")
    if got is None and wait_s > 0:
        got = await long_poll(state.wakeups, [f"inbox:{call_id}"], read, wait_s)
    return got or []
