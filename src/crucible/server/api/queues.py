"""crucible.Queue over HTTP: builders and the account's running containers. ``get`` long-polls
up to ``timeout_s``; a put wakes the getters of its queue on this server at once."""

from __future__ import annotations

from fastapi import APIRouter

from crucible.protocol.common import Wire
from crucible.protocol.coordination import (
    ObjectCreate,
    QueueClear,
    QueueGet,
    QueueInfo,
    QueueItems,
    QueuePut,
)
from crucible.server.api.deps import Member, RequestKey, State
from crucible.server.services import queues as svc
from crucible.server.services import request_keys
from crucible.server.wakeups import long_poll

router = APIRouter(prefix="/v1/queues", tags=["queues"])


class Put(Wire):
    put: int


@router.post("")
def create_queue(req: ObjectCreate, who: Member, state: State) -> QueueInfo:
    """The queue ``name`` (created when missing and ``create_if_missing``)."""
    with state.engine.begin() as conn:
        return svc.queue_info(
            conn, who, req.name, state.clock.now_ms(), create=req.create_if_missing
        )


@router.get("")
def list_queues(who: Member, state: State) -> list[QueueInfo]:
    with state.engine.begin() as conn:
        return svc.list_queues(conn, who, state.clock.now_ms())


@router.get("/{name}")
def get_queue(name: str, who: Member, state: State) -> QueueInfo:
    with state.engine.begin() as conn:
        return svc.queue_info(conn, who, name, state.clock.now_ms())


@router.delete("/{name}", status_code=204)
def delete_queue(name: str, who: Member, state: State) -> None:
    with state.engine.begin() as conn:
        svc.delete_queue(conn, who, name)


@router.post("/{name}/put")
async def put(name: str, req: QueuePut, who: Member, state: State, key: RequestKey = None) -> Put:
    keyed = request_keys.keyed(who, key, f"POST /v1/queues/{name}/put", req)
    now = state.clock.now_ms()
    answer = Put(put=len(req.values))
    with state.engine.begin() as conn:
        request_keys.claim(conn, keyed, now)
        qid = svc.put_items(conn, who, name, req, now, state.settings.queue_max_items)
        request_keys.keep(conn, keyed, 200, answer)
    state.wakeups.notify(f"queue:{qid}:{req.partition}")
    return answer


@router.post("/{name}/get")
async def get(name: str, req: QueueGet, who: Member, state: State) -> QueueItems:
    """Take up to ``n`` items from the head of a partition, waiting up to ``timeout_s`` for
    the first; an empty list when none came."""
    with state.engine.begin() as conn:
        qid = svc.queue_id(conn, who, name, state.clock.now_ms())

    def take() -> list[str] | None:
        with state.engine.begin() as conn:
            return svc.take_items(conn, qid, req.partition, req.n) or None

    got = await long_poll(state.wakeups, [f"queue:{qid}:{req.partition}"], take, req.timeout_s)
    return QueueItems(values=got or [])


@router.post("/{name}/clear", status_code=204)
def clear(name: str, req: QueueClear, who: Member, state: State) -> None:
    """Remove every item of one partition, or of all (``all``)."""
    with state.engine.begin() as conn:
        svc.clear(conn, who, name, None if req.all else req.partition, state.clock.now_ms())
