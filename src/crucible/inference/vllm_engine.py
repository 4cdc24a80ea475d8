"""vLLM, the production engine on GPU hosts: imported only where vLLM is installed.

This code path is real but untested in Crucible's CI (no GPU and no vLLM there). It drives
``vllm.AsyncLLMEngine`` with token-id prompts, streams each new token with its logprobs, and
serves PEFT LoRA adapters through vLLM's own multi-LoRA (``LoRARequest``), with the rank
limit passed as ``max_lora_rank``.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from crucible.inference.api_errors import RANK_HINT, bad_request, not_found
from crucible.inference.config import EngineConfig
from crucible.inference.engine import AdapterInfo, Engine, GenerationRequest, TokenStep

__all__ = ["VllmEngine"]


class VllmEngine(Engine):
    name = "vllm"

    def __init__(self, config: EngineConfig) -> None:
        from crucible.inference.transformers_engine import offline_hub

        offline_hub()
        try:
            import vllm
        except ImportError as exc:
            raise ValueError(
                "the vllm engine needs vLLM installed on this host (a GPU "
                "host's image); use --engine transformers elsewhere"
            ) from exc
        self._vllm = vllm
        args = vllm.AsyncEngineArgs(
            model=str(config.weights),
            dtype=config.dtype if config.dtype != "float32" else "auto",
            max_model_len=config.max_model_len,
            enable_lora=True,
            max_lora_rank=config.max_lora_rank,
            max_num_seqs=config.max_batch_size,
        )
        self.engine: Any = vllm.AsyncLLMEngine.from_engine_args(args)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(config.weights), local_files_only=True)
        self.context_length = config.max_model_len
        eos = self.tokenizer.eos_token_id
        self.eos_token_ids = frozenset({int(eos)} if eos is not None else set())
        self._max_rank = config.max_lora_rank
        self._adapters: dict[str, tuple[int, str, int]] = {}
        self._ids = itertools.count(1)
        for name, path in config.adapters.items():
            self.load_adapter(name, str(path))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return self.encode(str(text))

    def adapters(self) -> list[AdapterInfo]:
        return [AdapterInfo(n, p, r, True, 0) for n, (_i, p, r) in sorted(self._adapters.items())]

    def has_adapter(self, name: str) -> bool:
        return name in self._adapters

    def load_adapter(self, name: str, path: str) -> AdapterInfo:
        import json

        config_path = Path(path) / "adapter_config.json"
        if not config_path.is_file():
            raise bad_request(
                f"adapter at {path}: no adapter_config.json", param="path", code="invalid_adapter"
            )
        rank = int(json.loads(config_path.read_text()).get("r", 0))
        if rank > self._max_rank:
            raise bad_request(
                f"adapter {name!r} has rank {rank}, over this engine's limit of "
                f"{self._max_rank} {RANK_HINT}",
                param="path",
                code="adapter_rank_too_large",
            )
        self._adapters[name] = (next(self._ids), path, rank)
        return AdapterInfo(name, path, rank, True, 0)

    def unload_adapter(self, name: str) -> None:
        if self._adapters.pop(name, None) is None:
            raise not_found(
                f"no adapter named {name!r} is loaded", param="name", code="adapter_not_found"
            )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenStep]:
        vllm = self._vllm
        p = request.params
        sampling = vllm.SamplingParams(
            max_tokens=p.max_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
            seed=p.seed,
            logprobs=max(p.top_logprobs, 1),
            ignore_eos=p.ignore_eos,
        )
        lora = None
        if request.adapter is not None:
            lora_id, path, _rank = self._adapters[request.adapter]
            from vllm.lora.request import LoRARequest

            lora = LoRARequest(request.adapter, lora_id, path)
        request_id = uuid.uuid4().hex
        seen = 0
        async for output in self.engine.generate(
            {"prompt_token_ids": request.prompt_ids}, sampling, request_id, lora_request=lora
        ):
            completion = output.outputs[0]
            ids = completion.token_ids
            for i in range(seen, len(ids)):
                token = int(ids[i])
                entry = (completion.logprobs or [{}] * len(ids))[i] or {}
                lp = entry.get(token)
                top = sorted(
                    ((int(t), float(v.logprob)) for t, v in entry.items()), key=lambda tv: -tv[1]
                )[: p.top_logprobs]
                last = output.finished and i == len(ids) - 1
                yield TokenStep(
                    token,
                    float(lp.logprob) if lp else None,
                    top,
                    completion.finish_reason if last else None,
                )
            seen = len(ids)
