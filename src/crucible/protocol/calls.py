"""Calls: inputs, results, groups (the inputs of one ``.map``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from crucible.protocol.common import MAX_WIRE_INT, ErrorInfo, Payload, Wire, WireInt

# Positions in a map group are stored as 32-bit integers.
MAX_INDEX = 2**31 - 1 - 10_000

__all__ = [
    "CallAttempt",
    "CallInfo",
    "CallList",
    "CallTimeline",
    "CallsCreate",
    "CallsCreated",
    "GroupResults",
    "GroupResultsRequest",
    "InputItem",
    "ItemsAck",
    "ItemsPage",
    "ItemsSent",
    "TimelinePhase",
]


class InputItem(Wire):
    args: Payload
    idempotency_key: str | None = Field(default=None, max_length=128)


class CallsCreate(Wire):
    """Submit one or more inputs. Inputs of one ``.map`` share ``group_id`` and carry their
    position from ``start_index`` on. With ``wait_s`` > 0 and a single input, the response
    holds the result when it is ready within that time (the one-round-trip ``.remote()``)."""

    inputs: list[InputItem] = Field(min_length=1, max_length=10_000)
    group_id: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    start_index: int = Field(default=0, ge=0, le=MAX_INDEX)
    wait_s: float = Field(default=0.0, ge=0, le=60)


class CallInfo(Wire):
    id: str
    function_id: str
    app_id: str
    state: str
    attempts: WireInt
    created_ms: WireInt
    started_ms: WireInt | None = None
    finished_ms: WireInt | None = None
    group_id: str | None = None
    index: WireInt = 0
    result: Payload | None = None
    error: ErrorInfo | None = None
    exec_ms: WireInt | None = None
    # Carried across attempts: what preempted attempts ran is included.
    cost_micros: WireInt | None = None
    # Attempts ended by a preemption (requeued; they do not count against retries).
    preemptions: WireInt = 0
    # The schedule tick that made this call (None: a client submitted it).
    tick_ms: WireInt | None = None
    # A queued call: why it is not running yet, when the scheduler knows (no live host can
    # run it, every host busy, the market's refusal). None otherwise.
    waiting: str | None = None


class TimelinePhase(Wire):
    """One phase of a call's life. ``cost_micros`` is what the phase's container time cost
    (None for phases no container is billed for, such as waiting in the queue)."""

    phase: str  # queued | scheduled | starting | waiting | running
    start_ms: WireInt
    end_ms: WireInt
    ms: WireInt
    cost_micros: WireInt | None = None
    detail: str = ""
    # The attempt the phase leads to or belongs to (1 for the first; a queued phase after a
    # requeue belongs to the next attempt).
    attempt: WireInt = 1


class CallAttempt(Wire):
    """One attempt of a call: where it ran, how it ended and what its container time cost.
    ``outcome``: running, succeeded, failed, timed_out, cancelled (the call's own end), or
    preempted, host_lost, container_exited, stopped (the container was stopped by the
    exchange) for an attempt that ended while the call went on (requeued)."""

    attempt: WireInt
    outcome: str
    container_id: str | None
    host_id: str | None
    cold_start: bool  # the container was started for this attempt
    started_ms: WireInt | None  # handed to the container
    ended_ms: WireInt | None  # None while running
    error: ErrorInfo | None = None
    exec_ms: WireInt | None = None
    cost_micros: WireInt | None = None  # so far, while running


class CallTimeline(Wire):
    call_id: str
    state: str
    attempts: WireInt
    preemptions: WireInt
    container_id: str | None
    host_id: str | None
    cold_start: bool  # the container was started for this call (not warm already)
    phases: list[TimelinePhase]
    cost_micros: WireInt | None  # the call's own cost, across attempts
    # Every attempt, oldest first (the phases above cover them all, each marked with its
    # attempt); container_id, host_id and cold_start above are the latest attempt's.
    history: list[CallAttempt] = Field(default_factory=list)
    # The call's share of its container's metered energy and emissions: its run time at
    # the container's average power and intensity so far (None: nothing metered yet).
    energy_mwh: WireInt | None = None
    carbon_mg: WireInt | None = None


class ItemsSent(Wire):
    """What a generator call yielded since ``start``: the worker sends them in order."""

    call_id: str
    attempt: int = Field(ge=1, le=MAX_WIRE_INT)
    start: int = Field(ge=0, le=MAX_WIRE_INT)  # the index of items[0]
    items: list[Payload] = Field(max_length=1000)


class ItemsAck(Wire):
    consumed: WireInt  # items the caller has taken (the worker keeps at most a window ahead)


class ItemsPage(Wire):
    items: list[Payload]
    next: WireInt  # the index of the next item; pass it as ``after`` to read on
    done: bool  # the call ended and every item was read
    call: CallInfo


class CallsCreated(Wire):
    call_ids: list[str]
    # Present when wait_s was given and the single call finished in time.
    result: CallInfo | None = None


class CallList(Wire):
    calls: list[CallInfo]


class GroupResultsRequest(Wire):
    wait_s: float = Field(default=0.0, ge=0, le=60)
    limit: int = Field(default=5000, ge=1, le=50_000)
    indices: list[Annotated[int, Field(ge=0, le=MAX_INDEX)]] | None = Field(
        default=None,
        max_length=50_000,
        description="re-read these positions even if delivered before (recovery after a lost "
        "response)",
    )


class GroupResults(Wire):
    """Finished calls of a group not delivered before (each is delivered once), and how many
    of the group's calls are not finished yet."""

    results: list[CallInfo]
    outstanding: WireInt
