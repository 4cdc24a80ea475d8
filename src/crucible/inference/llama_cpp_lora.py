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

from crucible.inference.api_errors import bad_request, not_found
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
    def __init__(self, model: LlamaModel, workdir: Path, *, max_rank: int,
                 budget_bytes: int) -> None:
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
            raise bad_request(f"adapter at {source}: neither a PEFT adapter directory nor a "
                              "GGUF LoRA file (.gguf)", param="path", code="invalid_adapter")
        if size > self.budget_bytes:
            raise bad_request(
                f"adapter {name!r} needs {size} bytes, over this engine's LoRA memory budget "
                f"of {self.budget_bytes} bytes (--lora-budget-mb)", param="path",
                code="adapter_too_large")
        self._unload(name)
        self._registered[name] = _Registered(str(source), gguf_path, rank, size)
        try:
            self.acquire(name)
        except ValueError as exc:  # llama.cpp refused the file
            del self._registered[name]
            raise bad_request(f"adapter {name!r}: {exc}", param="path",
                              code="adapter_mismatch") from exc
        return self.info(name)

    def unregister(self, name: str) -> None:
        if name not in self._registered:
            raise not_found(f"no adapter named {name!r} is registered", param="name",
                            code="adapter_not_found")
        self._unload(name)
        entry = self._registered.pop(name)
        if entry.gguf.parent == self._workdir:
            entry.gguf.unlink(missing_ok=True)

    def infos(self) -> list[AdapterInfo]:
        """All registered adapters. Safe to call while another thread loads or evicts: it
        reads copies (made without running Python code, so under the GIL at once)."""
        registered, loaded = dict(self._registered), set(self._loaded)
        return [self._info(n, registered[n], n in loaded) for n in sorted(registered)]

    def info(self, name: str) -> AdapterInfo:
        return self._info(name, self._registered[name], name in self._loaded)

    @staticmethod
    def _info(name: str, entry: _Registered, loaded: bool) -> AdapterInfo:
        return AdapterInfo(name=name, path=entry.source, rank=entry.rank if loaded else 0,
                           loaded=loaded, size_bytes=entry.size_bytes if loaded else 0)

    def loaded_names(self) -> list[str]:
        """Loaded adapters, least recently used first."""
        return list(self._loaded)

    def acquire(self, name: str) -> LlamaAdapter:
        """The loaded adapter ``name``, loading it (and evicting the least recently used
        ones past the budget) if it is not."""
        entry = self._registered.get(name)
        if entry is None:
            raise not_found(f"no adapter named {name!r}", param="model",
                            code="model_not_found")
        adapter = self._loaded.get(name)
        if adapter is None:
            used = sum(self._registered[n].size_bytes for n in self._loaded)
            for victim in list(self._loaded):
                if used + entry.size_bytes <= self.budget_bytes:
                    break
                used -= self._registered[victim].size_bytes
                self._unload(victim)
                self.evictions += 1
            adapter = LlamaAdapter(self._model, entry.gguf)
            self._loaded[name] = adapter
            self.loads += 1
        self._loaded.move_to_end(name)
        return adapter

    def _unload(self, name: str) -> None:
        adapter = self._loaded.pop(name, None)
        if adapter is not None:
            adapter.close()

    def close(self) -> None:
        for name in list(self._loaded):
            self._unload(name)
