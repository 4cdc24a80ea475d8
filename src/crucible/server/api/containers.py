"""The worker's exchange: outputs in, inputs out, in batches; and a builder's list of their
own containers (``GET /v1/containers``)."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Query

from crucible.errors import NotFoundError
from crucible.protocol.containers import ContainerSummary, Exchange, ExchangeReply, OutputItem
from crucible.protocol.logs import LogBatch, LogSent
from crucible.server.api.deps import Builder, Container, State
from crucible.server.api.items import relay_bytes
from crucible.server.api.responses import model_response
from crucible.server.dispatch import Parked
from crucible.server.services.containers import (
    ContainerFacts,
    exchange_step,
    list_containers,
    load_container_facts,
    unclaim,
)
from crucible.server.services.logs import write_logs
from crucible.server.wakeups import RECHECK_S
from crucible.server.web_relay import Ended

router = APIRouter(prefix="/v1/containers", tags=["containers"])

_FACTS_CACHE_MAX = 100_000


@router.get("")
def list_own_containers(
    who: Builder,
    state: State,
    # An app's id or name (protocol.common.Named's characters): anything else matches none.
    app: str | None = Query(
        default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$"
    ),
    ended: bool = False,
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[ContainerSummary]:
    """The caller's containers, newest first: running ones (``ended=true``: stopped ones
    too), of one app when ``app`` names it (id or name)."""
    with state.engine.connect() as conn:
        return list_containers(conn, who, app=app, ended=ended, limit=limit)


# Inputs handed to a worker whose request then vanished (it died mid-poll) go back to the
# queue as if never claimed.
def _facts(state: State, container_id: str) -> ContainerFacts:
    facts: ContainerFacts | None = state.containers.facts.get(container_id)
    if facts is None:
        with state.engine.connect() as conn:
            facts = load_container_facts(conn, container_id)
        if len(state.containers.facts) >= _FACTS_CACHE_MAX:
            state.containers.facts.clear()
        state.containers.facts[container_id] = facts
    return facts


def _relayed_outputs(state: State, facts: ContainerFacts, outputs: list[OutputItem]) -> bool:
    """Deliver the outputs of relayed web requests (server/web_relay.py) to their readers and
    take them out of ``outputs`` (they have no rows); whether there were any."""
    relay = state.web.relay
    kept: list[OutputItem] = []
    found = False
    for out in outputs:
        relayed = relay.get(out.call_id, facts.id)
        if relayed is None:
            kept.append(out)
            continue
        found = True
        result = None
        if out.result is not None:
            result = relay_bytes(state, facts.account_id, out.result)
        relay.finish(relayed, Ended(out.status, result, out.error.code if out.error else None))
        if out.error is not None:
            _log_failure(state, facts, out)
    if found:
        outputs[:] = kept
    return found


def _log_failure(state: State, facts: ContainerFacts, out: OutputItem) -> None:
    """A failed relayed request has no call to keep its error: its owner reads it in the
    app's logs, under the request's id (``crucible logs APP --call rq-...``)."""
    assert out.error is not None
    text = f"{out.error.code}: {out.error.message}\n{out.error.traceback or ''}".rstrip()
    lines = [
        LogSent(ts_ms=state.clock.now_ms(), stream="stderr", call_id=out.call_id, line=line[:8192])
        for line in text.splitlines()[:200]
    ]
    with state.engine.begin() as conn:
        app_id = write_logs(conn, facts.id, LogBatch(lines=lines))
    if app_id is not None:
        state.wakeups.notify_many([f"logs:{app_id}"])


def _step(
    state: State,
    facts: ContainerFacts,
    outputs: list[OutputItem],
    want: int,
    active: bool = False,
    held: list[str] | None = None,
    ready: bool = True,
) -> ExchangeReply:
    s = state.settings
    with state.engine.begin() as conn:
        reply, keys = exchange_step(
            conn,
            facts,
            outputs,
            want,
            state.clock.now_ms(),
            inline_max=s.inline_payload_max_bytes,
            skip_locked=state.engine.dialect.name == "postgresql",
            groups=state.calls.claim_groups,
            touched_ms=state.containers.touched_ms,
            active=active,
            held=held,
            ready=ready,
        )
    if keys:
        state.wakeups.notify_many(keys)
        for key in keys:
            if key.startswith("fn:"):  # a failed attempt was requeued for a retry
                state.wakeups.work_queued(key[3:])
    return reply


@router.post("/{container_id}/exchange")
async def exchange(container_id: str, req: Exchange, who: Container, state: State) -> ExchangeReply:
    """Record the worker's outputs and give it up to ``want`` inputs. With nothing to give,
    park the container for direct hand-off of new inputs and wait up to ``wait_s``."""
    if who.container_id != container_id:
        raise NotFoundError(f"container {container_id} not found")
    facts = _facts(state, container_id)
    state.wakeups.worker_seen(facts.function_id)
    finished = list(req.outputs)
    relayed = _relayed_outputs(state, facts, req.outputs)
    channels = state.web.channels
    # The calls the container holds take its web channel's slots (web_channel.py).
    if req.held is not None:
        done = {o.call_id for o in req.outputs}
        channels.calls_held(container_id, len(set(req.held) - done))
    else:
        channels.calls_given(container_id, -len(req.outputs))
    # A container whose web channel is full takes no calls now.
    want = 0 if channels.saturated(container_id) else req.want
    ready = not req.init_failed
    reply = _step(state, facts, req.outputs, want, active=relayed, held=req.held, ready=ready)
    channels.calls_given(container_id, len(reply.inputs))
    if finished:
        state.observations.observe_exec(facts.function_id, [o.exec_us / 1000 for o in finished])
        for o in finished:
            state.metrics.finished(o.status, o.exec_us / 1e6, o.error.code if o.error else None)
    if reply.inputs or reply.stop or req.wait_s <= 0 or req.want <= 0:
        return model_response(reply)  # type: ignore[return-value]

    loop = asyncio.get_running_loop()
    deadline = loop.time() + req.wait_s
    keys = (f"fn:{facts.function_id}", f"container:{container_id}")
    with state.wakeups.listen(*keys) as event:
        parked = Parked(container_id, facts.function_id, req.want, event)
        state.dispatcher.park(parked)
        delivered = False
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return model_response(ExchangeReply())  # type: ignore[return-value]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout=min(remaining, RECHECK_S))
                event.clear()
                if parked.handed:
                    delivered = True
                    return model_response(ExchangeReply(inputs=parked.handed))  # type: ignore[return-value]
                # Woken by queued work or a stop, or the periodic re-read of the store.
                want = 0 if channels.saturated(container_id) else req.want
                again = _step(state, facts, [], want, ready=ready)
                channels.calls_given(container_id, len(again.inputs))
                if again.inputs or again.stop:
                    return model_response(again)  # type: ignore[return-value]
        finally:
            state.dispatcher.unpark(parked)
            if parked.handed and not delivered:
                ids = [a.call_id for a in parked.handed]
                ids = state.web.relay.undelivered(container_id, ids)  # relayed: taken back
                channels.calls_given(container_id, -len(ids))
                if ids:
                    with state.engine.begin() as conn:
                        unclaim(conn, container_id, ids)
                    state.wakeups.work_queued(facts.function_id)
