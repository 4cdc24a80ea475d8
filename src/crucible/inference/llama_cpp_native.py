"""llama.cpp through its own C API (the ctypes bindings of ``llama-cpp-python``).

The engine drives llama.cpp at the level of ``llama.h``: a model, one context (one sequence
at a time), llama.cpp's own sampler chain, and LoRA adapters in GGUF form set per context
(``llama_adapter_lora_init`` / ``llama_set_adapters_lora``). This module is that thin typed
layer. Every call here blocks; callers run it in a worker thread and hold the engine's
lock, since a llama.cpp context is not safe to use from two threads at once.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import Any

__all__ = ["LlamaAdapter", "LlamaContext", "LlamaModel", "load_bindings", "quantize"]

_init_lock = threading.Lock()
_lib: Any = None
_log_callback: Any = None


def load_bindings() -> Any:
    """llama.cpp's C API (``llama_cpp.llama_cpp``), initialised once, its logging silenced.

    Raises ImportError naming the package to install when the bindings are absent.
    """
    global _lib, _log_callback
    with _init_lock:
        if _lib is None:
            try:
                import llama_cpp.llama_cpp as lib
            except ImportError as exc:
                raise ImportError(
                    "the llama-cpp engine needs llama.cpp's Python bindings: "
                    "pip install 'crucible[gguf]' (or ./scripts/setup gguf)"
                ) from exc
            # llama.cpp prints every tensor it loads to stderr; a model server's log is for
            # its requests. The callback object must stay alive as long as the library.
            _log_callback = lib.llama_log_callback(lambda level, text, data: None)
            lib.llama_log_set(_log_callback, ctypes.c_void_p(0))
            lib.llama_backend_init()
            _lib = lib
        return _lib


def _threads() -> int:
    return max(1, len(os.sched_getaffinity(0)))


class LlamaModel:
    """A GGUF model file loaded on the CPU. Freed with :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.lib = lib = load_bindings()
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0
        self.ptr = lib.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            raise ValueError(f"llama.cpp could not load {path} (not a GGUF model it knows?)")
        self.path = path
        self.vocab = lib.llama_model_get_vocab(self.ptr)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(lib.llama_model_n_ctx_train(self.ptr))
        self.bos = int(lib.llama_vocab_bos(self.vocab))
        self.eos = int(lib.llama_vocab_eos(self.vocab))

    def close(self) -> None:
        if self.ptr:
            self.lib.llama_model_free(self.ptr)
            self.ptr = None

    def metadata(self, key: str) -> str | None:
        """A metadata value of the GGUF file as a string, or None if it has no ``key``."""
        size = 256
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self.lib.llama_model_meta_val_str(self.ptr, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = n + 1

    def chat_template(self) -> str | None:
        found = self.lib.llama_model_chat_template(self.ptr, None)
        return None if not found else bytes(found).decode()

    def is_eog(self, token: int) -> bool:
        """Whether ``token`` ends a generation (end of sequence, end of turn)."""
        return bool(self.lib.llama_vocab_is_eog(self.vocab, token))

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        data = text.encode()
        room = len(data) + 8
        out = (self.lib.llama_token * room)()
        n = self.lib.llama_tokenize(self.vocab, data, len(data), out, room, False, special)
        if n < 0:  # -n is the room it needs
            room = -n
            out = (self.lib.llama_token * room)()
            n = self.lib.llama_tokenize(self.vocab, data, len(data), out, room, False, special)
        return list(out[:n])

    def piece(self, token: int) -> bytes:
        """The bytes of one token as the model writes it (special tokens included)."""
        buf = ctypes.create_string_buffer(64)
        n = self.lib.llama_token_to_piece(self.vocab, token, buf, 64, 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self.lib.llama_token_to_piece(self.vocab, token, buf, -n, 0, True)
        return buf.raw[:n]

    def detokenize(self, ids: list[int]) -> str:
        return b"".join(self.piece(t) for t in ids).decode("utf-8", errors="replace")


class LlamaAdapter:
    """A LoRA adapter in GGUF form, loaded against ``model``. Freed with :meth:`close`."""

    def __init__(self, model: LlamaModel, path: Path) -> None:
        self.model = model
        self.ptr = model.lib.llama_adapter_lora_init(model.ptr, str(path).encode())
        if not self.ptr:
            raise ValueError(
                f"llama.cpp refused the LoRA adapter {path} (a GGUF LoRA "
                "made for another base model or architecture?)"
            )

    def close(self) -> None:
        if self.ptr:
            self.model.lib.llama_adapter_lora_free(self.ptr)
            self.ptr = None


class LlamaContext:
    """One llama.cpp context over ``model``: a KV cache for one sequence of ``n_ctx``."""

    def __init__(self, model: LlamaModel, n_ctx: int, n_batch: int = 512) -> None:
        self.model = model
        self.lib = lib = model.lib
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = 1
        # half the cores (llama-cpp-python's default for generation): ggml's threads wait
        # for each other by spinning, and on cores shared with the server, the client and
        # other work a step stalls whenever one is descheduled. On 2 busy cores, 2 threads
        # took 2.8-5.6 s to the first token of a 38-token prompt, 1 thread 0.4-1 s.
        params.n_threads = params.n_threads_batch = max(1, _threads() // 2)
        params.no_perf = True
        # off, as llama-cpp-python has it: its "auto" picks a kernel whose rounding differs
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ptr = lib.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise ValueError(f"llama.cpp could not make a context of {n_ctx} tokens")
        self.n_ctx = int(lib.llama_n_ctx(self.ptr))
        self.n_batch = n_batch

    def close(self) -> None:
        if self.ptr:
            self.lib.llama_free(self.ptr)
            self.ptr = None

    def set_adapter(self, adapter: LlamaAdapter | None, scale: float = 1.0) -> None:
        """Serve the next sequence with ``adapter`` (None: the base model alone)."""
        lib = self.lib
        if adapter is None:
            rc = lib.llama_set_adapters_lora(self.ptr, None, 0, None)
        else:
            ptrs = (lib.llama_adapter_lora_p_ctypes * 1)(
                ctypes.cast(adapter.ptr, lib.llama_adapter_lora_p_ctypes)
            )
            rc = lib.llama_set_adapters_lora(self.ptr, ptrs, 1, (ctypes.c_float * 1)(scale))
        if rc != 0:
            raise RuntimeError(f"llama_set_adapters_lora failed ({rc})")

    def clear(self) -> None:
        """Forget the previous sequence (its KV cache)."""
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ptr), True)

    def decode(self, tokens: list[int], n_past: int) -> None:
        """Feed ``tokens`` at positions ``n_past...``; logits are kept for the last one."""
        lib = self.lib
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            batch = lib.llama_batch_init(len(chunk), 0, 1)
            try:
                batch.n_tokens = len(chunk)
                for i, token in enumerate(chunk):
                    batch.token[i] = token
                    batch.pos[i] = n_past + start + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = start + i == len(tokens) - 1
                rc = lib.llama_decode(self.ptr, batch)
            finally:
                lib.llama_batch_free(batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed ({rc})")

    def last_logits(self) -> Any:
        """The logits after the last decoded token, as a float32 numpy view (copy to keep)."""
        import numpy as np

        ptr = self.lib.llama_get_logits_ith(self.ptr, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))

    def sampler(self, temperature: float, top_p: float, seed: int | None) -> Any:
        """llama.cpp's own sampler chain: greedy at temperature 0, else top-p, temperature
        and a seeded draw. Free it with :meth:`free_sampler`."""
        lib = self.lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        if top_p < 1.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(top_p, 1))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(temperature))
        draw = lib.LLAMA_DEFAULT_SEED if seed is None else seed & 0xFFFFFFFF
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(draw))
        return chain

    def free_sampler(self, chain: Any) -> None:
        self.lib.llama_sampler_free(chain)

    def sample(self, chain: Any) -> int:
        """Choose the next token from the last logits (the chain records it as accepted)."""
        return int(self.lib.llama_sampler_sample(chain, self.ptr, -1))


def quantize(source: Path, dest: Path, ftype: int) -> None:
    """Rewrite the GGUF model ``source`` as ``dest`` with llama.cpp's quantizer (``ftype`` a
    ``LLAMA_FTYPE_*``; 0 = all float32, which dequantizes a quantized model)."""
    lib = load_bindings()
    params = lib.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = _threads()
    rc = lib.llama_model_quantize(str(source).encode(), str(dest).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc}) for {source}")
