"""The service behind the OpenAI routes: requests to engine sequences, results to OpenAI's
response objects (chat completions, completions, their stream chunks, embeddings).

``n`` runs n sequences of the same prompt at once (seeds ``seed``, ``seed+1``, ...); usage
counts the prompt once and every generated token.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from crucible.inference.api_errors import OpenAIError, bad_request, not_found
from crucible.inference.config import EngineConfig
from crucible.inference.engine import AdapterInfo, Engine, GenerationRequest, SamplingParams
from crucible.inference.json_output import RETRY_MIN_TEMPERATURE, json_problem, schema_of
from crucible.inference.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from crucible.inference.textgen import TextDelta, run_choice

__all__ = [
    "ServerState",
    "adapter_json",
    "chat",
    "chat_stream",
    "completion",
    "completion_stream",
    "embed",
]


@dataclass
class ServerState:
    config: EngineConfig
    engine: Engine
    created: int = field(default_factory=lambda: int(time.time()))
    _embedder: Any = None

    @property
    def embeddings_name(self) -> str:
        path = self.config.embeddings
        return path.name if path is not None else ""

    def embedder(self) -> Any:
        if self._embedder is None:
            from crucible.inference.embeddings import EmbeddingModel

            assert self.config.embeddings is not None
            self._embedder = EmbeddingModel(self.config.embeddings, device=self.config.device)
        return self._embedder

    def adapter_for(self, model: str) -> str | None:
        """The adapter ``model`` names (None for the base model); 404 when it is unknown."""
        base = self.config.served_name
        if model == base:
            return None
        name = model.removeprefix(base + ":") if model.startswith(base + ":") else model
        if self.engine.has_adapter(name):
            return name
        raise not_found(
            f"the model {model!r} does not exist: this server serves {base!r} "
            f"and its adapters as '{base}:ADAPTER' (GET /v1/models lists them)",
            param="model",
        )


def adapter_json(info: AdapterInfo) -> dict[str, Any]:
    return {
        "id": info.name,
        "object": "adapter",
        "path": info.path,
        "rank": info.rank,
        "loaded": info.loaded,
        "size_bytes": info.size_bytes,
    }


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _params(
    max_tokens: int,
    body: ChatCompletionRequest | CompletionRequest,
    index: int,
    logprobs: bool,
    top: int,
) -> SamplingParams:
    seed = None if body.seed is None else body.seed + index
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=seed,
        logprobs=logprobs,
        top_logprobs=top,
    )


def _max_tokens(engine: Engine, prompt_len: int, asked: int | None) -> int:
    room = engine.context_length - prompt_len
    if room <= 0:
        raise bad_request(
            f"the prompt has {prompt_len} tokens; this model's context is "
            f"{engine.context_length} tokens",
            param="messages",
            code="context_length_exceeded",
        )
    if asked is not None and asked > room:
        raise bad_request(
            f"max_tokens {asked} plus the prompt's {prompt_len} tokens is over this model's "
            f"context of {engine.context_length} tokens; ask for at most {room}",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return asked if asked is not None else room


# chat ------------------------------------------------------------------------------------


@dataclass
class _Chat:
    prompt: list[int]
    adapter: str | None
    max_tokens: int
    top: int


def _prepare_chat(state: ServerState, body: ChatCompletionRequest) -> _Chat:
    adapter = state.adapter_for(body.model)
    try:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    except ValueError as exc:
        raise bad_request(str(exc), param="messages") from exc
    prompt = state.engine.chat_prompt(messages)
    asked = (
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    )
    if body.top_logprobs and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
    if body.response_format is not None:
        schema_of(body.response_format)
    return _Chat(
        prompt, adapter, _max_tokens(state.engine, len(prompt), asked), body.top_logprobs or 0
    )


def _chat_logprobs(engine: Engine, deltas: list[TextDelta]) -> dict[str, Any]:
    content = []
    for delta in deltas:
        for step in delta.steps:
            token = engine.decode([step.token_id])
            content.append(
                {
                    "token": token,
                    "logprob": step.logprob,
                    "bytes": list(token.encode()),
                    "top_logprobs": [
                        {
                            "token": (t := engine.decode([i])),
                            "logprob": lp,
                            "bytes": list(t.encode()),
                        }
                        for i, lp in step.top_logprobs
                    ],
                }
            )
    return {"content": content}


async def _collect(engine: Engine, request: GenerationRequest, stops: list[str]) -> list[TextDelta]:
    return [d async for d in run_choice(engine, request, stops)]


async def _json_choice(
    state: ServerState, body: ChatCompletionRequest, prep: _Chat, index: int
) -> list[TextDelta]:
    assert body.response_format is not None
    schema = schema_of(body.response_format)
    problem = ""
    spent = 0  # output tokens generated over the attempts
    for attempt in range(state.config.json_attempts):
        params = _params(prep.max_tokens, body, index, body.logprobs, prep.top)
        if attempt:
            seed = None if params.seed is None else params.seed + 1000 * attempt
            params = SamplingParams(
                params.max_tokens,
                max(params.temperature, RETRY_MIN_TEMPERATURE),
                params.top_p,
                seed,
                params.logprobs,
                params.top_logprobs,
            )
        deltas = await _collect(
            state.engine, GenerationRequest(prep.prompt, params, prep.adapter), body.stops()
        )
        problem = json_problem("".join(d.text for d in deltas), schema) or ""
        if not problem:
            return deltas
        spent += deltas[-1].completion_tokens if deltas else 0
    # The attempts were generated: their tokens are charged (the exchange bounds the charge
    # by the request's limits, so by one answer's worth at most).
    raise OpenAIError(
        422,
        f"the model's output is {problem} after "
        f"{state.config.json_attempts} attempts (response_format is "
        "enforced by validate-and-retry)",
        param="response_format",
        code="json_output_failed",
        usage=_usage(len(prep.prompt), spent),
    )


async def _chat_choices(
    state: ServerState, body: ChatCompletionRequest, prep: _Chat
) -> list[list[TextDelta]]:
    if body.response_format is not None and body.response_format.type != "text":
        jobs = [_json_choice(state, body, prep, i) for i in range(body.n)]
    else:
        jobs = [
            _collect(
                state.engine,
                GenerationRequest(
                    prep.prompt,
                    _params(prep.max_tokens, body, i, body.logprobs, prep.top),
                    prep.adapter,
                ),
                body.stops(),
            )
            for i in range(body.n)
        ]
    return list(await asyncio.gather(*jobs))


async def chat(state: ServerState, body: ChatCompletionRequest) -> dict[str, Any]:
    prep = _prepare_chat(state, body)
    results = await _chat_choices(state, body, prep)
    choices = []
    completion_tokens = 0
    for index, deltas in enumerate(results):
        completion_tokens += deltas[-1].completion_tokens if deltas else 0
        choices.append(
            {
                "index": index,
                "message": {"role": "assistant", "content": "".join(d.text for d in deltas)},
                "logprobs": _chat_logprobs(state.engine, deltas) if body.logprobs else None,
                "finish_reason": deltas[-1].finish_reason if deltas else "length",
            }
        )
    return {
        "id": _id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": choices,
        "usage": _usage(len(prep.prompt), completion_tokens),
    }


async def _merge(streams: list[AsyncIterator[TextDelta]]) -> AsyncIterator[tuple[int, TextDelta]]:
    """Interleave several choices' deltas as they come."""
    queue: asyncio.Queue[tuple[int, TextDelta | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[TextDelta]) -> None:
        try:
            async for delta in stream:
                await queue.put((index, delta))
            await queue.put((index, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            await queue.put((index, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    left = len(tasks)
    try:
        while left:
            index, item = await queue.get()
            if item is None:
                left -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _buffered(deltas: list[TextDelta]) -> AsyncIterator[TextDelta]:
    for delta in deltas:
        yield delta


async def chat_stream(
    state: ServerState, body: ChatCompletionRequest
) -> AsyncIterator[dict[str, Any]]:
    prep = _prepare_chat(state, body)
    cid, created = _id("chatcmpl"), int(time.time())

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "choices": choices,
        }
        if body.stream_options is not None and body.stream_options.include_usage:
            out["usage"] = usage
        return out

    if body.response_format is not None and body.response_format.type != "text":
        # validate-and-retry: a choice streams once its whole text has validated
        streams = [_buffered(d) for d in await _chat_choices(state, body, prep)]
    else:
        streams = [
            run_choice(
                state.engine,
                GenerationRequest(
                    prep.prompt,
                    _params(prep.max_tokens, body, i, body.logprobs, prep.top),
                    prep.adapter,
                ),
                body.stops(),
            )
            for i in range(body.n)
        ]
    yield chunk(
        [
            {
                "index": i,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            for i in range(body.n)
        ]
    )
    tokens = [0] * body.n
    async for index, delta in _merge(streams):
        tokens[index] = delta.completion_tokens
        choice: dict[str, Any] = {
            "index": index,
            "delta": {"content": delta.text} if delta.text else {},
            "logprobs": _chat_logprobs(state.engine, [delta]) if body.logprobs else None,
            "finish_reason": delta.finish_reason,
        }
        yield chunk([choice])
    if body.stream_options is not None and body.stream_options.include_usage:
        yield chunk([], _usage(len(prep.prompt), sum(tokens)))


# completions ------------------------------------------------------------------------------


def _prompts(
    state: ServerState, prompt: str | list[str] | list[int] | list[list[int]]
) -> list[list[int]]:
    if isinstance(prompt, str):
        return [state.engine.encode(prompt)]
    if not prompt:
        raise bad_request("prompt is empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    if all(isinstance(p, str) for p in prompt):
        return [state.engine.encode(p) for p in prompt]  # type: ignore[arg-type]
    return [list(p) for p in prompt if isinstance(p, list)]


def _completion_logprobs(engine: Engine, deltas: list[TextDelta], offset: int) -> dict[str, Any]:
    tokens, logprobs, tops, offsets = [], [], [], []
    for delta in deltas:
        for step in delta.steps:
            token = engine.decode([step.token_id])
            tokens.append(token)
            logprobs.append(step.logprob)
            tops.append({engine.decode([i]): lp for i, lp in step.top_logprobs})
            offsets.append(offset)
            offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def _completion_jobs(
    state: ServerState, body: CompletionRequest
) -> tuple[list[list[int]], str | None, list[tuple[int, GenerationRequest]]]:
    adapter = state.adapter_for(body.model)
    prompts = _prompts(state, body.prompt)
    top = state.engine.vocab_size
    if any(t < 0 or (top is not None and t >= top) for p in prompts for t in p):
        raise bad_request(
            f"prompt token ids must be in [0, {top}) for this model"
            if top is not None
            else "prompt token ids must be non-negative",
            param="prompt",
        )
    jobs = []
    for p_index, prompt in enumerate(prompts):
        if not prompt:
            raise bad_request("prompt is empty", param="prompt")
        max_tokens = _max_tokens(state.engine, len(prompt), body.max_tokens)
        for i in range(body.n):
            params = _params(max_tokens, body, i, body.logprobs is not None, body.logprobs or 0)
            jobs.append((p_index, GenerationRequest(prompt, params, adapter)))
    return prompts, adapter, jobs


async def completion(state: ServerState, body: CompletionRequest) -> dict[str, Any]:
    prompts, _adapter, jobs = _completion_jobs(state, body)
    results = await asyncio.gather(*[_collect(state.engine, r, body.stops()) for _, r in jobs])
    choices = []
    completion_tokens = 0
    for index, ((p_index, _request), deltas) in enumerate(zip(jobs, results, strict=True)):
        prefix = state.engine.decode(prompts[p_index]) if body.echo else ""
        completion_tokens += deltas[-1].completion_tokens if deltas else 0
        choices.append(
            {
                "index": index,
                "text": prefix + "".join(d.text for d in deltas),
                "logprobs": _completion_logprobs(state.engine, deltas, len(prefix))
                if body.logprobs is not None
                else None,
                "finish_reason": deltas[-1].finish_reason if deltas else "length",
            }
        )
    return {
        "id": _id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": choices,
        "usage": _usage(sum(len(p) for p in prompts), completion_tokens),
    }


async def completion_stream(
    state: ServerState, body: CompletionRequest
) -> AsyncIterator[dict[str, Any]]:
    prompts, _adapter, jobs = _completion_jobs(state, body)
    cid, created = _id("cmpl"), int(time.time())
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    tokens = [0] * len(jobs)
    offsets = [0] * len(jobs)
    if body.echo:
        for index, (p_index, _r) in enumerate(jobs):
            text = state.engine.decode(prompts[p_index])
            offsets[index] = len(text)
            yield {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": body.model,
                "choices": [
                    {"index": index, "text": text, "logprobs": None, "finish_reason": None}
                ],
            }
    streams = [run_choice(state.engine, r, body.stops()) for _, r in jobs]
    async for index, delta in _merge(streams):
        tokens[index] = delta.completion_tokens
        logprobs = (
            _completion_logprobs(state.engine, [delta], offsets[index])
            if body.logprobs is not None
            else None
        )
        offsets[index] += len(delta.text)
        out: dict[str, Any] = {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": [
                {
                    "index": index,
                    "text": delta.text,
                    "logprobs": logprobs,
                    "finish_reason": delta.finish_reason,
                }
            ],
        }
        if include_usage:
            out["usage"] = None
        yield out
    if include_usage:
        yield {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": [],
            "usage": _usage(sum(len(p) for p in prompts), sum(tokens)),
        }


# embeddings -------------------------------------------------------------------------------


async def embed(state: ServerState, body: EmbeddingRequest) -> dict[str, Any]:
    if state.config.embeddings is None:
        raise not_found(
            "this model serves no embeddings (its engine was started without --embeddings DIR)",
            param="model",
        )
    if body.model not in (state.embeddings_name, state.config.served_name):
        raise not_found(
            f"the model {body.model!r} does not exist: embeddings are served "
            f"as {state.embeddings_name!r}",
            param="model",
        )
    raw: Any = body.input
    inputs: list[Any]
    if isinstance(raw, str):
        inputs = [raw]
    elif raw and all(isinstance(x, int) for x in raw):
        inputs = [list(raw)]
    else:
        inputs = list(raw)
    if not inputs or any(len(x) == 0 for x in inputs):
        raise bad_request("input must be a non-empty string or array", param="input")
    if len(inputs) > 2048:
        raise bad_request("input has more than 2048 items", param="input")
    model = state.embedder()
    if body.dimensions is not None and body.dimensions != model.dimensions:
        raise bad_request(
            f"dimensions {body.dimensions} is not served: this model's "
            f"embeddings have {model.dimensions}",
            param="dimensions",
        )
    vectors, tokens = await asyncio.to_thread(model.embed, inputs)
    data = []
    for index, vector in enumerate(vectors):
        value: Any = vector
        if body.encoding_format == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": value})
    return {
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
