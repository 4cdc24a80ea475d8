"""The reference engine: a Hugging Face causal LM with continuous batching, on CPU or GPU.

Continuous batching: one thread runs a step loop. Each step admits waiting requests (up to
``max_batch_size`` running sequences; a new one is prefilled alone, so its prompt never waits
for others), then runs ONE batched decode forward over every running sequence. Each sequence
keeps its own KV cache; for the batched forward the caches are left-padded to a common length
with an attention mask over the padding, and split back afterwards. A sequence leaves the
batch the step it finishes (end of sequence, ``max_tokens``, context full, or its client went
away), and a waiting one takes its place on the next step.

LoRA adapters (:mod:`crucible.inference.lora`) apply per batch row, so base-model and adapter
requests share a batch.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import os
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crucible.inference.api_errors import OpenAIError, bad_request, overloaded
from crucible.inference.config import EngineConfig
from crucible.inference.engine import AdapterInfo, Engine, GenerationRequest, TokenStep
from crucible.inference.lora import LoraRegistry
from crucible.inference.sampling import choose_token

__all__ = ["TransformersEngine", "offline_hub"]


def offline_hub() -> None:
    """Forbid Hugging Face hub downloads in this process: weights come from files only."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[var] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@dataclass(eq=False)
class _Sequence:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[TokenStep | BaseException]
    generator: Any
    cache: list[tuple[Any, Any]] = field(default_factory=list)
    length: int = 0  # tokens in the cache
    last_token: int = 0
    produced: int = 0
    cancelled: bool = False

    def emit(self, item: TokenStep | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(self, config: EngineConfig) -> None:
        offline_hub()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        self.config = config
        weights = Path(config.weights)
        if not (weights / "config.json").is_file():
            raise ValueError(
                f"{weights} is not a transformers model directory "
                "(no config.json): pass --weights DIR saved with save_pretrained"
            )
        dtype = getattr(torch, config.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(str(weights), local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(weights), local_files_only=True, dtype=dtype
        )
        self.model = model.to(config.device)
        self.model.eval()
        self.context_length = min(
            config.max_model_len,
            int(getattr(self.model.config, "max_position_embeddings", config.max_model_len)),
        )
        self.vocab_size = int(self.model.get_input_embeddings().num_embeddings)
        eos = self.model.config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        if self.tokenizer.eos_token_id is not None:
            eos_ids.append(self.tokenizer.eos_token_id)
        self.eos_token_ids = frozenset(int(e) for e in eos_ids if e is not None)
        self.lora = LoraRegistry(
            self.model,
            max_rank=config.max_lora_rank,
            budget_bytes=config.lora_budget_bytes,
            device=config.device,
            dtype=dtype,
        )
        for name, path in config.adapters.items():
            self.lora.register(name, str(path))
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._cond = threading.Condition()
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._running: list[_Sequence] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        #: how many sequences each decode step ran together (the last 1,000 steps)
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=1000)

    # tokenizer ---------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise bad_request(
                "this model has no chat template; use /v1/completions",
                param="messages",
                code="no_chat_template",
            )
        try:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # the template's own checks (roles, order) raise here
            raise bad_request(
                f"the model's chat template refused these messages: {exc}", param="messages"
            ) from exc
        return self.encode(str(text))

    # adapters ----------------------------------------------------------------------------
    def adapters(self) -> list[AdapterInfo]:
        return self.lora.infos()

    def has_adapter(self, name: str) -> bool:
        return name in self.lora

    def load_adapter(self, name: str, path: str) -> AdapterInfo:
        return self.lora.register(name, path)

    def unload_adapter(self, name: str) -> None:
        self.lora.unregister(name)

    # lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="crucible-batcher", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None

    # generation --------------------------------------------------------------------------
    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenStep]:
        if not request.prompt_ids:
            raise bad_request("the prompt is empty", param="prompt")
        if len(request.prompt_ids) >= self.context_length:
            raise bad_request(
                f"the prompt has {len(request.prompt_ids)} tokens; this model's context is "
                f"{self.context_length} tokens",
                param="messages",
                code="context_length_exceeded",
            )
        if request.adapter is not None:
            self.lora.acquire(request.adapter)
        torch = self._torch
        generator = torch.Generator(device=self.config.device)  # beside the logits
        seed = request.params.seed
        generator.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(6)))
        seq = _Sequence(
            request=request,
            loop=asyncio.get_running_loop(),
            queue=asyncio.Queue(),
            generator=generator,
        )
        try:
            with self._cond:
                if len(self._waiting) >= self.config.max_queued:
                    raise overloaded(
                        f"{len(self._waiting)} requests are already waiting; retry shortly"
                    )
                self._waiting.append(seq)
                self._cond.notify_all()
            if self._thread is None:
                await self.start()
            while True:
                item = await seq.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            seq.cancelled = True
            with self._cond:
                self._cond.notify_all()
            if request.adapter is not None:
                self.lora.release(request.adapter)

    def _run(self) -> None:
        torch = self._torch
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self._running:
                    self._cond.wait()
                if self._stopping:
                    for seq in [*self._waiting, *self._running]:
                        seq.emit(
                            OpenAIError(
                                503,
                                "the model server is stopping",
                                type="server_error",
                                code="server_stopping",
                            )
                        )
                    return
                self._running = [s for s in self._running if not s.cancelled]
                admitted: list[_Sequence] = []
                while (
                    self._waiting
                    and len(self._running) + len(admitted) < self.config.max_batch_size
                ):
                    seq = self._waiting.popleft()
                    if not seq.cancelled:
                        admitted.append(seq)
            try:
                with torch.inference_mode():
                    for seq in admitted:
                        self._prefill(seq)
                        if not self._finished(seq):
                            self._running.append(seq)
                    batch = [s for s in self._running if not s.cancelled]
                    if batch:
                        self._decode(batch)
                    self._running = [s for s in batch if not self._finished(s)]
            except Exception as exc:  # a failure of the model fails the sequences it ran
                failure = OpenAIError(
                    500, f"the engine failed: {exc}", type="server_error", code="engine_error"
                )
                for seq in [*admitted, *self._running]:
                    seq.emit(failure)
                    seq.cancelled = True
                self._running = []

    def _finished(self, seq: _Sequence) -> bool:
        return seq.cancelled or seq.produced < 0

    def _forward(self, input_ids: Any, rows: dict[str, Any], **kwargs: Any) -> Any:
        self.lora.rows = rows
        try:
            return self.model(input_ids=input_ids, use_cache=True, **kwargs)
        finally:
            self.lora.rows = {}

    @staticmethod
    def _cache_of(out: Any) -> Any:
        cache = getattr(out, "cache", None)
        return cache if cache is not None else out.past_key_values

    def _prefill(self, seq: _Sequence) -> None:
        torch = self._torch
        ids = torch.tensor([seq.request.prompt_ids], device=self.config.device)
        rows = (
            {}
            if seq.request.adapter is None
            else {seq.request.adapter: torch.tensor([0], device=self.config.device)}
        )
        out = self._forward(ids, rows)
        cache = self._cache_of(out)
        seq.cache = [(layer.keys, layer.values) for layer in cache.layers]
        seq.length = len(seq.request.prompt_ids)
        self._accept(seq, out.logits[0, -1])

    def _decode(self, batch: list[_Sequence]) -> None:
        torch = self._torch
        from transformers import DynamicCache

        device = self.config.device
        longest = max(s.length for s in batch)
        cache = DynamicCache()
        for layer in range(len(batch[0].cache)):
            keys, values = [], []
            for seq in batch:
                k, v = seq.cache[layer]
                pad = longest - seq.length
                if pad:
                    k = torch.nn.functional.pad(k, (0, 0, pad, 0))
                    v = torch.nn.functional.pad(v, (0, 0, pad, 0))
                keys.append(k)
                values.append(v)
            cache.update(torch.cat(keys), torch.cat(values), layer)
        mask = torch.zeros((len(batch), longest + 1), dtype=torch.long, device=device)
        for i, seq in enumerate(batch):
            mask[i, longest - seq.length :] = 1
        ids = torch.tensor([[s.last_token] for s in batch], device=device)
        positions = torch.tensor([[s.length] for s in batch], device=device)
        rows: dict[str, list[int]] = {}
        for i, seq in enumerate(batch):
            if seq.request.adapter is not None:
                rows.setdefault(seq.request.adapter, []).append(i)
        out = self._forward(
            ids,
            {n: torch.tensor(r, device=device) for n, r in rows.items()},
            attention_mask=mask,
            position_ids=positions,
            **{self._cache_kw: cache},
        )
        new = self._cache_of(out)
        self.batch_sizes.append(len(batch))
        for i, seq in enumerate(batch):
            start = longest - seq.length
            seq.cache = [
                (layer.keys[i : i + 1, :, start:], layer.values[i : i + 1, :, start:])
                for layer in new.layers
            ]
            seq.length += 1
            self._accept(seq, out.logits[i, -1])

    def _accept(self, seq: _Sequence, logits: Any) -> None:
        """Sample the next token of ``seq``, send it, and mark the sequence finished
        (``produced`` = -1) when it ends."""
        params = seq.request.params
        step = choose_token(logits, params, seq.generator)
        seq.produced += 1
        seq.last_token = step.token_id
        finish = None
        if step.token_id in self.eos_token_ids and not params.ignore_eos:
            finish = "stop"
        elif seq.produced >= params.max_tokens or seq.length + 1 >= self.context_length:
            finish = "length"
        if finish is not None:
            step = TokenStep(step.token_id, step.logprob, step.top_logprobs, finish)
            seq.produced = -1
            seq.cache = []
        seq.emit(step)
