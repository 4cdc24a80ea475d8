"""The worker's exchange: outputs in, inputs out, in batches."""

from __future__ import annotations

from fastapi import APIRouter

from crucible.errors import NotFoundError
from crucible.protocol.containers import Exchange, ExchangeReply
from crucible.server.api.deps import Container, State
from crucible.server.services.containers import exchange_step
from crucible.server.wakeups import long_poll

router = APIRouter(prefix="/v1/containers", tags=["containers"])


@router.post("/{container_id}/exchange")
async def exchange(container_id: str, req: Exchange, who: Container, state: State) -> ExchangeReply:
    if who.container_id != container_id:
        raise NotFoundError(f"container {container_id} not found")
    s = state.settings
    skip_locked = state.engine.dialect.name == "postgresql"
    with state.engine.begin() as conn:
        reply, keys, function_id = exchange_step(
            conn,
            container_id,
            req.outputs,
            req.want,
            state.clock.now_ms(),
            inline_max=s.inline_payload_max_bytes,
            skip_locked=skip_locked,
        )
    if req.outputs:
        state.observe_exec(function_id, [o.exec_ms for o in req.outputs])
    if keys:
        state.wakeups.notify_many(keys)
        for key in keys:
            if key.startswith("fn:"):  # a failed attempt was requeued for a retry
                state.wakeups.work_queued(key[3:])
    if reply.inputs or reply.stop or req.wait_s <= 0 or req.want <= 0:
        return reply

    def poll() -> ExchangeReply | None:
        with state.engine.begin() as conn:
            again, more, _ = exchange_step(
                conn,
                container_id,
                [],
                req.want,
                state.clock.now_ms(),
                inline_max=s.inline_payload_max_bytes,
                skip_locked=skip_locked,
            )
        state.wakeups.notify_many(more)
        return again if again.inputs or again.stop else None

    found = await long_poll(
        state.wakeups,
        [f"fn:{function_id}", f"container:{container_id}"],
        poll,
        req.wait_s,
        checked=True,
    )
    return found or ExchangeReply()
