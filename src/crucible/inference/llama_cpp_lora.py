"""The llama-cpp engine's LoRA adapters: registered GGUF files, the loaded ones in an LRU.

An adapter is registered from a PEFT directory (converted once to a GGUF LoRA in the
engine's work directory, :func:`crucible.inference.gguf_lora.convert_peft`) or from a GGUF
LoRA file, or a directory holding one alone (checked, used in place). Registering loads it,
so a bad adapter is a 400 at once.
Loaded adapters (llama.cpp's ``llama_adapter_lora``) stay in an LRU within a memory budget;
an evicted adapter stays registered and is loaded again from its GGUF file on its next
request. Not thread-safe by itself: the engine calls it under its own lock, and a llama.cpp
context serves one sequence at a time, so no adapter is in use while another is loaded.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from crucible.inference.api_errors import OpenAIError, bad_request, not_found
from crucible.inference.engine import AdapterInfo
from crucible.inference.gguf_lora import BaseTensors, check_gguf_lora, convert_peft
from crucible.inference.llama_cpp_native import LlamaAdapter, LlamaModel

__all__ = ["GgufLoraRegistry"]


@dataclass
class _Registered:
    source: str  # what the adapter was added from (a PEFT directory or a .gguf file)
    gguf: Path  # the GGUF LoRA llama.cpp loads
    rank: int
    size_bytes: int


class GgufLoraRegistry:
    def __init__(
        self, model: LlamaModel, workdir: Path, *, max_rank: int, budget_bytes: int
    ) -> None:
        self._model = model
        self._base = BaseTensors.read(model.path)
        self._workdir = workdir
        self.max_rank = max_rank
        self.budget_bytes = budget_bytes
        self._registered: dict[str, _Registered] = {}
        self._loaded: OrderedDict[str, LlamaAdapter] = OrderedDict()
        self.loads = 0
        self.evictions = 0
        self._serial = 0

    def __contains__(self, name: object) -> bool:
        return name in self._registered

    def register(self, name: str, path: str) -> AdapterInfo:
        source = Path(path)
        if source.is_dir() and not (source / "adapter_config.json").exists():
            found = sorted(source.glob("*.gguf"))  # what `crucible model adapter add` uploads
            if len(found) == 1:
                source = found[0]
        if source.is_file() and source.suffix == ".gguf":
            rank, size = check_gguf_lora(name, source, self._base, self.max_rank)
            gguf_path = source
        elif source.is_dir():
            self._serial += 1
            gguf_path = self._workdir / f"adapter-{self._serial}.gguf"
            rank, size = convert_peft(name, source, self._base, self.max_rank, gguf_path)
        else:
            raise bad_request(
                f"adapter at {source}: neither a PEFT adapter directory nor a "
                "GGUF LoRA file (.gguf)",
                param="path",
                code="invalid_adapter",
            )
        try:
            if size > self.budget_bytes:
                raise bad_request(
                    f"adapter {name!r} needs {size} bytes, over this engine's LoRA memory "
                    f"budget of {self.budget_bytes} bytes (--lora-budget-mb)",
                    param="path",
                    code="adapter_too_large",
                )
            self._make_room(size, keep=name)
            try:
                adapter = LlamaAdapter(self._model, gguf_path)
            except ValueError as exc:  # llama.cpp refused the file
                raise bad_request(
                    f"adapter {name!r}: {exc}", param="path", code="adapter_mismatch"
                ) from exc
        except OpenAIError:
            self._discard(gguf_path)
            raise
        # the adapter of that name it replaces, if any, goes only now that this one loaded
        old = self._registered.pop(name, None)
        self._unload(name)
        if old is not None and old.gguf != gguf_path:
            self._discard(old.gguf)
        self._registered[name] = _Registered(str(source), gguf_path, rank, size)
        self._loaded[name] = adapter
        self.loads += 1
        return self.info(name)

    def _discard(self, gguf_path: Path) -> None:
        """Delete a GGUF file this registry converted (never one a user gave)."""
        if gguf_path.parent == self._workdir:
            gguf_path.unlink(missing_ok=True)

    def unregister(self, name: str) -> None:
        if name not in self._registered:
            raise not_found(
                f"no adapter named {name!r} is registered", param="name", code="adapter_not_found"
            )
        self._unload(name)
        self._discard(self._registered.pop(name).gguf)

    def infos(self) -> list[AdapterInfo]:
        """All registered adapters. Safe to call while another thread loads or evicts: it
        reads copies (made without running Python code, so under the GIL at once)."""
        registered, loaded = dict(self._registered), set(self._loaded)
        return [self._info(n, registered[n], n in loaded) for n in sorted(registered)]

    def info(self, name: str) -> AdapterInfo:
        return self._info(name, self._registered[name], name in self._loaded)

    @staticmethod
    def _info(name: str, entry: _Registered, loaded: bool) -> AdapterInfo:
        return AdapterInfo(
            name=name,
            path=entry.source,
            rank=entry.rank if loaded else 0,
            loaded=loaded,
            size_bytes=entry.size_bytes if loaded else 0,
        )

    def loaded_names(self) -> list[str]:
        """Loaded adapters, least recently used first."""
        return list(self._loaded)

    def acquire(self, name: str) -> LlamaAdapter:
        """The loaded adapter ``name``, loading it (and evicting the least recently used
        ones past the budget) if it is not."""
        entry = self._registered.get(name)
        if entry is None:
            raise not_found(f"no adapter named {name!r}", param="model", code="model_not_found")
        adapter = self._loaded.get(name)
        if adapter is None:
            self._make_room(entry.size_bytes, keep=name)
            adapter = LlamaAdapter(self._model, entry.gguf)
            self._loaded[name] = adapter
            self.loads += 1
        self._loaded.move_to_end(name)
        return adapter

    def _make_room(self, size: int, keep: str) -> None:
        """Evict the least recently used adapters (not ``keep``) until ``size`` bytes fit."""
        used = sum(self._registered[n].size_bytes for n in self._loaded if n != keep)
        for victim in list(self._loaded):
            if used + size <= self.budget_bytes:
                break
            if victim == keep:
                continue
            used -= self._registered[victim].size_bytes
            self._unload(victim)
            self.evictions += 1

    def _unload(self, name: str) -> None:
        adapter = self._loaded.pop(name, None)
        if adapter is not None:
            adapter.close()

    def close(self) -> None:
        for name in list(self._loaded):
            self._unload(name)
