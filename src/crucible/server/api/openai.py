"""The OpenAI API: ``{server}/openai/v1``, with a Crucible token as the API key.

``model`` names a model deployment (``NAME``, ``NAME:ADAPTER``, or another account's public
``OWNER/NAME[:ADAPTER]``). A request becomes one call of the model's web function, whose
engine answers it; a streamed answer (``"stream": true``) passes through as the engine
produces its server-sent events. Every answer's ``usage`` is recorded and charged per token
(services/models.py); for streams the engine is always asked for the final usage chunk,
which reaches the client only when it asked for it (``stream_options.include_usage``).
Errors are in OpenAI's shape (api/openai_errors.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from crucible.core.token_bounds import RequestBounds
from crucible.core.token_pricing import TokenUsage
from crucible.errors import InsufficientCreditError, InvalidRequestError, PermissionDeniedError
from crucible.protocol.ids import new_id
from crucible.server.api.openai_errors import openai_error
from crucible.server.api.web_calls import WebCallResponse, body_parts, call_web_function
from crucible.server.auth import Principal
from crucible.server.billing.holds import place_hold, release_hold
from crucible.server.billing.statements import credit_refusal
from crucible.server.services import models as svc
from crucible.server.services.accounts import authenticate
from crucible.server.state import ServerState

router = APIRouter(prefix="/openai/v1", tags=["openai"])
log = logging.getLogger("crucible.openai")

__all__ = ["router"]

_ADAPTER_HEADER = "x-crucible-adapter"
_ADAPTER_PATH_HEADER = "x-crucible-adapter-path"


def _caller(request: Request) -> tuple[ServerState, Principal]:
    state: ServerState = request.app.state.crucible
    who = authenticate(state, request.headers.get("authorization"))
    if who.scope not in ("admin", "user"):
        raise PermissionDeniedError(
            f"the OpenAI API needs a user token as its API key, not a {who.scope} token "
            "(create one with `crucible token create`)"
        )
    return state, who


def _model_entry(label: str, created_ms: int, owner: str) -> dict[str, Any]:
    return {"id": label, "object": "model", "created": created_ms // 1000, "owned_by": owner}


def _where_to_look(call_id: str) -> str:
    """Where a model's owner reads why a request failed: a call's record, or for a request
    handed straight to a container (``rq-``, no call kept) the deployment's logs."""
    if call_id.startswith("ca-"):
        return f"`crucible call {call_id}` and `crucible logs`"
    return (
        "`crucible logs` (the model's deployment; a request handed straight to its "
        "container keeps no call record)"
    )


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The caller's models and other accounts' public ones that serve (a stopped one answers
    every request 404), each adapter as its own entry (``NAME:ADAPTER``)."""
    state, who = _caller(request)
    with state.engine.connect() as conn:
        infos = svc.list_models(conn, who, public=True)
        me = svc.account_name(conn, who.account_id)
    data = []
    for m in infos:
        if m.state != "running":
            continue
        base = m.name if m.owner == me else f"{m.owner}/{m.name}"
        data.append(_model_entry(base, m.created_ms, m.owner))
        data.extend(_model_entry(f"{base}:{a.name}", a.created_ms, m.owner) for a in m.adapters)
    return {"object": "list", "data": data}


@router.get("/models/{model:path}")
async def get_model(model: str, request: Request) -> dict[str, Any]:
    state, who = _caller(request)
    with state.engine.connect() as conn:
        r = svc.resolve(conn, who, model)
        owner = svc.account_name(conn, r.model.account_id)
    created = r.adapter.created_ms if r.adapter else r.model.created_ms
    return _model_entry(model, created, owner)


def _request_body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        what = "is required" if model in (None, "") else "must be a string"
        raise InvalidRequestError(
            f"'model' {what}: the name of one of your models (GET /openai/v1/models)"
        )
    if "stream" in body and not isinstance(body["stream"], bool | None):
        raise InvalidRequestError("'stream' must be true or false")
    options = body.get("stream_options")
    if options is not None:  # as OpenAI's API answers
        if not isinstance(options, dict):
            raise InvalidRequestError("'stream_options' must be an object")
        if not body.get("stream"):
            raise InvalidRequestError(
                "'stream_options' is only allowed when 'stream' is true: drop it, or stream"
            )
    return body


def _usage(obj: Any) -> TokenUsage | None:
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return None
    i = usage.get("prompt_tokens", 0)
    o = usage.get("completion_tokens", 0)
    if not isinstance(i, int) or not isinstance(o, int) or i < 0 or o < 0:
        return None
    return TokenUsage(i, o)


@dataclass(frozen=True, slots=True)
class _Metered:
    """One request's metering: who pays, its most (``bounds``) and its credit ``hold``."""

    resolved: svc.Resolved
    who: Principal
    bounds: RequestBounds
    hold: str | None


def _record(state: ServerState, m: _Metered, usage: TokenUsage, call_id: str) -> None:
    billed = m.bounds.cap(usage)
    if billed != usage:
        log.warning(
            "model %s reported %d input + %d output tokens for request %s, which allowed at "
            "most %d + %d: charged %d + %d",
            m.resolved.label,
            usage.input_tokens,
            usage.output_tokens,
            call_id,
            m.bounds.max_input_tokens,
            m.bounds.max_output_tokens,
            billed.input_tokens,
            billed.output_tokens,
        )
    try:
        with state.engine.begin() as conn:
            svc.record_usage(
                conn,
                m.resolved,
                m.who,
                billed,
                call_id,
                state.clock.now_ms(),
                round(state.settings.platform_fee * 1_000_000),
                hold=m.hold,
            )
    except Exception:  # the answer was delivered; a failed record must not break it
        log.exception("recording the usage of %s failed", call_id)


def _release(state: ServerState, m: _Metered) -> None:
    """Drop the request's hold (it ended without a charge, or was charged already)."""
    if m.hold is None:
        return
    try:
        with state.engine.begin() as conn:
            release_hold(conn, m.hold)
    except Exception:  # the hold lapses by itself (billing/holds.HOLD_TTL_MS)
        log.exception("releasing the hold %s failed", m.hold)


_PROMPT_PARAM = {
    "/v1/chat/completions": "messages",
    "/v1/completions": "prompt",
    "/v1/embeddings": "input",
}


def _meter(
    state: ServerState, who: Principal, resolved: svc.Resolved, path: str, body: dict[str, Any]
) -> _Metered:
    """The request's bounds, and where credits are required its hold: the most it may cost,
    reserved from the caller's credit before any engine work."""
    bounds = svc.request_bounds(resolved, path, body)
    if not state.settings.require_credits or who.account_id == resolved.owner.account_id:
        return _Metered(resolved, who, bounds, None)
    now = state.clock.now_ms()
    most = bounds.max_charge_micros(svc.prices_of(resolved))
    if most == 0:  # not priced per token: only the account's standing matters
        with state.engine.connect() as conn:
            reason = credit_refusal(conn, state.credit.checked, who.account_id, now)
        if reason is not None:
            raise InsufficientCreditError(reason)
        return _Metered(resolved, who, bounds, None)
    hold = new_id("th")
    what = (
        f"at most {bounds.max_input_tokens} input and {bounds.max_output_tokens} output "
        f"tokens on {resolved.label}"
    )
    with state.engine.begin() as conn:
        place_hold(conn, who.account_id, hold, most, now, what)
    return _Metered(resolved, who, bounds, hold)


async def _forward(request: Request, path: str) -> Response:
    state, who = _caller(request)
    state.limits.take(state.limits.submit, who)
    raw = await request.body()
    limit = state.settings.openai_max_request_bytes
    if len(raw) > limit:
        return openai_error(
            400,
            f"the request body is {len(raw)} bytes; this exchange accepts at most {limit} "
            "bytes per model request (CRUCIBLE_OPENAI_MAX_REQUEST_BYTES): send a shorter "
            "prompt",
            "request_too_large",
            _PROMPT_PARAM[path],
        )
    encoding = request.headers.get("content-encoding", "").strip()
    if encoding and encoding.lower() != "identity":
        # Not decompressed here (nor anywhere in the API): said so, rather than "not valid
        # JSON" about the compressed bytes, or a plain body taken under a false label.
        raise InvalidRequestError(
            f"the body is compressed (Content-Encoding: {encoding[:40]}), which this API does "
            "not take: send it uncompressed"
        )
    body = _request_body(raw)
    with state.engine.connect() as conn:
        resolved = svc.resolve(conn, who, body["model"])
    try:
        metered = _meter(state, who, resolved, path, body)
    except svc.TokenBoundError as exc:
        r = exc.refusal
        return openai_error(400, r.message, r.code, r.param)
    streaming = False
    try:
        response, streaming = await _run(state, metered, path, body)
        return response
    finally:
        if not streaming:
            _release(state, metered)


async def _run(
    state: ServerState, metered: _Metered, path: str, body: dict[str, Any]
) -> tuple[Response, bool]:
    """The request's answer, and whether it streams (the stream then settles the hold)."""
    resolved = metered.resolved
    if path == "/v1/embeddings":
        # Not an embeddings parameter: an engine answers JSON whatever it says, and that
        # answer is charged like any other.
        body.pop("stream", None)
        body.pop("stream_options", None)
    stream = bool(body.get("stream"))
    wants_usage = False
    if stream:
        opts = body.get("stream_options")
        wants_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        # Only the usage chunk is asked of the engine: another option the caller chose
        # (vLLM's continuous_usage_stats puts a running usage in every chunk) would change
        # what the stream reports, and so what it is charged.
        body["stream_options"] = {"include_usage": True}
    headers = [("content-type", "application/json"), ("accept", "application/json")]
    if resolved.adapter is not None:
        body["model"] = resolved.adapter.name
        headers += [
            (_ADAPTER_HEADER, resolved.adapter.name),
            (_ADAPTER_PATH_HEADER, resolved.adapter.path),
        ]
    else:
        body["model"] = resolved.model.name
    answer = await call_web_function(
        state, resolved.owner, resolved.function.id, "POST", path, headers, orjson.dumps(body)
    )
    if answer.status is None:
        return _no_answer(answer), False
    if stream and answer.status == 200 and _is_event_stream(answer.headers):
        progress = _Progress()
        return _SettledStream(
            _stream(state, metered, answer, wants_usage, progress),
            answer.call_id,
            lambda: _settle_rest(state, metered, answer, answer.body),
            progress,
        ), True
    data = b"".join([part async for part in answer.body])
    if answer.state != "succeeded":
        return _no_answer(answer), False  # cut short: what came is not the whole answer
    media = dict(answer.headers).get("content-type", "application/json")
    if answer.status == 200:
        parsed = _json_or_none(data)
        usage = _usage(parsed)
        if usage is not None:
            _record(state, metered, usage, answer.call_id)
        if isinstance(parsed, dict) and "model" in parsed:
            parsed["model"] = resolved.label  # the name the caller used
            data = orjson.dumps(parsed)
    elif answer.status >= 500:
        log.warning("model %s answered %s (call %s)", resolved.label, answer.status, answer.call_id)
        return openai_error(
            502,
            f"the model's server answered {answer.status} (call {answer.call_id}); its owner "
            f"sees why with {_where_to_look(answer.call_id)}",
            "engine_error",
        ), False
    elif (usage := _usage(_json_or_none(data))) is not None:
        # A refusal that says what it spent (Crucible's engine after response_format's
        # attempts): the tokens were generated, so they are charged.
        _record(state, metered, usage, answer.call_id)
    if answer.status != 200 and not _openai_shaped(data):
        # An engine's own refusal in another shape (a framework's 422, plain text): the
        # same status class in OpenAI's shape, so that its clients read the message.
        status = 400 if answer.status == 422 else answer.status
        return openai_error(status, _error_text(data, answer.status), "engine_refused"), False
    return Response(
        data,
        status_code=answer.status,
        media_type=media,
        headers={"x-crucible-call-id": answer.call_id},
    ), False


def _json_or_none(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _openai_shaped(data: bytes) -> bool:
    body = _json_or_none(data)
    return isinstance(body, dict) and isinstance(body.get("error"), dict)


def _error_text(data: bytes, status: int) -> str:
    """What an engine's refusal says, as one line (a FastAPI ``detail`` list included)."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        parts = []
        for d in detail[:5]:
            if isinstance(d, dict):
                loc = ".".join(str(x) for x in d.get("loc", ()) if x != "body")
                parts.append(f"{loc}: {d.get('msg', 'invalid')}")
        text = "; ".join(parts)
    elif detail is not None:
        text = str(detail)
    else:
        text = data.decode("utf-8", "replace").strip()
    return f"the model refused the request ({status}): {text[:500] or 'no detail'}"


def _no_answer(answer: WebCallResponse) -> JSONResponse:
    if answer.state == "queued":
        return openai_error(
            503,
            f"the model did not start in time (request {answer.call_id} is still queued); "
            "retry shortly",
            "model_not_ready",
        )
    return openai_error(
        502,
        f"the model's server failed this request (call {answer.call_id} {answer.state}"
        f"{': ' + answer.error_code if answer.error_code else ''}); its owner sees why with "
        f"{_where_to_look(answer.call_id)}",
        "engine_error",
    )


class _Progress:
    """Whether a stream's generator has begun (its ``finally`` settles the hold only then)."""

    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started = False


class _SettledStream(StreamingResponse):
    """A streamed answer whose hold is settled even when its events are never read: the
    client left (or its socket failed) before the response began. The engine still finishes
    the answer, so, as for a client that leaves mid-stream, its usage is read from the rest
    of it and charged, and the hold released; never left to lapse an hour later."""

    def __init__(
        self,
        events: AsyncIterator[bytes],
        call_id: str,
        settle: Callable[[], None],
        progress: _Progress,
    ) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"x-crucible-call-id": call_id, "cache-control": "no-cache"},
        )
        self._settle = settle
        self._progress = progress

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self._progress.started:
                self._settle()


def _settle_rest(
    state: ServerState,
    metered: _Metered,
    answer: WebCallResponse,
    parts: AsyncIterator[bytes] | None = None,
    *,
    last: TokenUsage | None = None,
) -> None:
    """Charge what the engine reports for an answer nobody reads, in the background: from
    ``parts`` (the answer's own body, never read), else read again from the call; ``last``
    is the running usage the part already read reported, if the rest reports none."""
    task = asyncio.get_running_loop().create_task(_charge_rest(state, metered, answer, parts, last))
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _stream(
    state: ServerState,
    metered: _Metered,
    answer: WebCallResponse,
    wants_usage: bool,
    progress: _Progress,
) -> AsyncIterator[bytes]:
    """Server-sent events as the engine produces them, one whole event at a time, each
    chunk's ``model`` the name the caller used (as in a non-streamed answer); the usage
    chunk (empty ``choices`` and a ``usage``) is recorded, and dropped unless asked for. A
    client that leaves before the usage chunk is still charged the usage the rest of the
    answer reports (read on in the background); its hold is released either way."""
    progress.started = True
    buffer = b""
    recorded = False
    last: TokenUsage | None = None  # the latest usage a chunk with choices carried
    done = False
    try:
        async for part in answer.body:
            buffer += part
            *events, buffer = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
            out = []
            for event in events:
                usage, usage_only = _event_usage(event)
                if usage_only and usage is not None and not recorded:
                    # The usage chunk, the whole answer's: recorded before the client reads
                    # the end of the stream, so a bill read right after it shows the charge.
                    recorded = True
                    _record(state, metered, usage, answer.call_id)
                elif usage is not None:
                    last = usage  # a running figure: the stream's last one counts
                if usage_only and not wants_usage:
                    continue
                out.append(_relabel(event, metered.resolved.label) + b"\n\n")
            if out:
                yield b"".join(out)
        done = True
    finally:
        if not done and not recorded:
            # The client left early: the engine still finishes the answer, so its usage is
            # read from the rest of the stream and charged all the same.
            _settle_rest(state, metered, answer, last=last)
        elif not recorded and last is not None:
            _record(state, metered, last, answer.call_id)
        elif not recorded:
            _release(state, metered)  # the answer carried no usage: nothing to charge
    if buffer.strip():
        yield buffer
    if answer.state != "succeeded":
        # Cut short (the container died mid-answer): say so in the stream, as OpenAI
        # does, rather than end it as if complete.
        message = (
            f"the model's server failed mid-answer (call {answer.call_id} {answer.state}"
            f"{': ' + answer.error_code if answer.error_code else ''}); its owner sees why "
            f"with {_where_to_look(answer.call_id)}"
        )
        err = {
            "error": {
                "message": message,
                "type": "server_error",
                "param": None,
                "code": "engine_error",
            }
        }
        yield b"data: " + orjson.dumps(err) + b"\n\n"


_background: set[asyncio.Task[None]] = set()


def _relabel(event: bytes, label: str) -> bytes:
    """An SSE event whose JSON chunk names the engine's model (the model's or the adapter's
    bare name), naming ``label`` instead; any other event as it is."""
    if b'"model"' not in event:
        return event
    lines = event.split(b"\n")
    for i, line in enumerate(lines):
        if not line.startswith(b"data:"):
            continue
        try:
            chunk = orjson.loads(line[5:].strip())
        except orjson.JSONDecodeError:
            return event
        if not isinstance(chunk, dict) or "model" not in chunk:
            return event
        chunk["model"] = label
        lines[i] = b"data: " + orjson.dumps(chunk)
        return b"\n".join(lines)
    return event


def _is_event_stream(headers: Sequence[tuple[str, str]]) -> bool:
    """Whether an engine's answer is server-sent events (an engine that ignores ``stream``
    answers one JSON document, charged as such)."""
    return any(
        k.lower() == "content-type" and v.lower().startswith("text/event-stream")
        for k, v in headers
    )


def _event_usage(event: bytes) -> tuple[TokenUsage | None, bool]:
    """The usage an SSE event carries, and whether it is the usage-only chunk (no choices)."""
    if b'"usage"' not in event:
        return None, False
    try:
        chunk = orjson.loads(event.partition(b"data:")[2].strip())
    except orjson.JSONDecodeError:
        return None, False
    usage = _usage(chunk)
    return usage, usage is not None and not chunk.get("choices")


async def _charge_rest(
    state: ServerState,
    metered: _Metered,
    answer: WebCallResponse,
    parts: AsyncIterator[bytes] | None,
    last: TokenUsage | None = None,
) -> None:
    """Charge the usage chunk of the rest of a stream, else the last running usage seen."""
    buffer = b""
    # Without ``parts``, read again from the call's items (a relayed request: on from where
    # the client's reader stopped): the client's reader was cancelled with the client.
    if parts is None:
        parts = body_parts(state, metered.resolved.owner, answer.call_id, answer.relayed)
    try:
        async for part in parts:
            buffer += part
            *events, buffer = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
            for event in events:
                usage, usage_only = _event_usage(event)
                if usage is not None and usage_only:
                    _record(state, metered, usage, answer.call_id)
                    return
                last = usage or last
        if last is not None:
            _record(state, metered, last, answer.call_id)
    finally:
        _release(state, metered)
        aclose = getattr(parts, "aclose", None)
        if aclose is not None:
            await aclose()


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _forward(request, "/v1/chat/completions")


@router.post("/completions")
async def completions(request: Request) -> Response:
    return await _forward(request, "/v1/completions")


@router.post("/embeddings")
async def embeddings(request: Request) -> Response:
    return await _forward(request, "/v1/embeddings")
