"""LoRA adapters (PEFT format) served on top of one base model, many per batch.

Each adapter is read from ``adapter_config.json`` and ``adapter_model.safetensors``, checked
against the base model (rank within the engine's limit, every target module a linear layer
of the base with matching shapes) and kept in an LRU within a memory budget. Adapters in use
by a running sequence are pinned and never evicted; an evicted adapter stays registered and
is read from disk again on its next request.

Serving is by forward hooks on the base model's linear layers: before each forward the
engine says which batch rows use which adapter (:attr:`LoraRegistry.rows`), and the hook adds
``scale * B(A(x))`` to those rows only, so base and adapter requests share one batch. The
delta is the one PEFT computes (``lora_B(lora_A(x)) * lora_alpha / r``, or ``/ sqrt(r)``
with rsLoRA), so a sequence gets the same tokens as under PEFT alone.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crucible.inference.api_errors import (
    RANK_HINT,
    OpenAIError,
    bad_request,
    not_found,
    overloaded,
)
from crucible.inference.engine import AdapterInfo

__all__ = ["LoraAdapter", "LoraRegistry", "read_adapter"]

_PREFIX = "base_model.model."


@dataclass
class LoraAdapter:
    name: str
    path: str
    rank: int
    # module name -> (A [r, in], B [out, r], scale)
    modules: dict[str, tuple[Any, Any, float]]
    size_bytes: int


def _adapter_error(path: Path, problem: str) -> OpenAIError:
    return bad_request(f"adapter at {path}: {problem}", param="path", code="invalid_adapter")


def read_adapter(
    name: str,
    path: Path,
    linear_shapes: dict[str, tuple[int, int]],
    max_rank: int,
    device: str = "cpu",
    dtype: Any = None,
) -> LoraAdapter:
    """Read and check a PEFT LoRA adapter; raise a 400 naming the problem if it cannot serve.

    ``linear_shapes`` maps the base model's linear modules to (in_features, out_features).
    """
    from safetensors.torch import load_file

    if not path.is_dir():
        raise _adapter_error(
            path,
            "not a directory (a PEFT adapter directory holds "
            "adapter_config.json and adapter_model.safetensors)",
        )
    config_path = path / "adapter_config.json"
    if not config_path.is_file():
        raise _adapter_error(path, "no adapter_config.json (is this a PEFT adapter directory?)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise _adapter_error(path, f"adapter_config.json is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise _adapter_error(path, "adapter_config.json must hold a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise _adapter_error(
            path, f"peft_type {config.get('peft_type')!r} is not served; only LoRA adapters are"
        )
    for flag, what in (("use_dora", "DoRA"), ("fan_in_fan_out", "fan_in_fan_out layers")):
        if config.get(flag):
            raise _adapter_error(path, f"{what} adapters are not served")
    if config.get("modules_to_save"):
        raise _adapter_error(
            path, "modules_to_save (fully trained modules) are not served; only LoRA matrices are"
        )
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise _adapter_error(path, "adapter_config.json has no positive integer rank 'r'")
    weights_path = path / "adapter_model.safetensors"
    if not weights_path.is_file():
        hint = (
            (
                " (adapter_model.bin is a pickle and is not loaded: re-save the adapter with "
                "safe_serialization=True)"
            )
            if (path / "adapter_model.bin").exists()
            else ""
        )
        raise _adapter_error(path, f"no adapter_model.safetensors{hint}")
    try:
        tensors = load_file(str(weights_path))
    except Exception as exc:
        raise _adapter_error(path, f"adapter_model.safetensors cannot be read ({exc})") from exc

    pairs: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        module, _, kind = key.rpartition(".lora_")
        if not kind or module == key:
            raise _adapter_error(path, f"weight {key!r} is not a LoRA matrix")
        kind = kind.removesuffix(".weight").removesuffix(".default")
        if kind not in ("A", "B"):
            raise _adapter_error(path, f"weight {key!r} is not served (only lora_A/lora_B)")
        pairs.setdefault(module.removeprefix(_PREFIX), {})[kind] = tensor
    if not pairs:
        raise _adapter_error(path, "adapter_model.safetensors holds no LoRA weights")
    _check_targets(name, config.get("target_modules"), pairs, linear_shapes)

    alpha = float(config.get("lora_alpha", rank))
    alpha_pattern = config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora"))
    modules: dict[str, tuple[Any, Any, float]] = {}
    size = 0
    max_seen = 0
    for module, pair in sorted(pairs.items()):
        if "A" not in pair or "B" not in pair:
            raise _adapter_error(path, f"module {module!r} lacks its lora_A or lora_B matrix")
        a, b = pair["A"], pair["B"]
        if module not in linear_shapes:
            targets = config.get("target_modules")
            raise bad_request(
                f"adapter {name!r}: target module {module!r} does not match the base model "
                f"(target_modules {targets!r}; the base has no linear layer of that name)",
                param="path",
                code="adapter_mismatch",
            )
        in_f, out_f = linear_shapes[module]
        r = int(a.shape[0])
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != in_f or b.shape != (out_f, r):
            raise bad_request(
                f"adapter {name!r}: target module {module!r} does not match the base model: "
                f"the base layer maps {in_f} -> {out_f} features, the adapter's matrices are "
                f"A {tuple(a.shape)} and B {tuple(b.shape)}",
                param="path",
                code="adapter_mismatch",
            )
        max_seen = max(max_seen, r)
        mod_alpha = alpha
        for pattern, value in alpha_pattern.items():
            if module.endswith(pattern):
                mod_alpha = float(value)
        scale = mod_alpha / (math.sqrt(r) if rslora else r)
        a = a.to(device=device, dtype=dtype or a.dtype)
        b = b.to(device=device, dtype=dtype or b.dtype)
        modules[module] = (a, b, scale)
        size += a.numel() * a.element_size() + b.numel() * b.element_size()
    if max(rank, max_seen) > max_rank:
        raise bad_request(
            f"adapter {name!r} has rank {max(rank, max_seen)}, over this engine's limit of "
            f"{max_rank} {RANK_HINT}",
            param="path",
            code="adapter_rank_too_large",
        )
    return LoraAdapter(
        name=name, path=str(path), rank=max(rank, max_seen), modules=modules, size_bytes=size
    )


def _targeted(targets: Any) -> Callable[[str], bool]:
    """PEFT's rule for which module names ``target_modules`` names: a list names a module by
    its whole name or its last parts (``q_proj`` names ``model.layers.0.self_attn.q_proj``), a
    string is a regular expression the whole name must match, ``all-linear`` names every
    linear layer."""
    if targets == "all-linear":
        return lambda module: True
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error:
            return lambda module: False
        return lambda module: pattern.fullmatch(module) is not None
    names = [t for t in targets if isinstance(t, str)] if isinstance(targets, list) else []
    return lambda module: any(module == t or module.endswith("." + t) for t in names)


def _check_targets(
    name: str, targets: Any, pairs: dict[str, Any], linear_shapes: dict[str, tuple[int, int]]
) -> None:
    """An adapter's weights and its ``target_modules`` must agree as PEFT reads them: PEFT
    refuses target modules that name no layer of the base, and leaves out weights for a
    module they do not name (served as they were, they gave other tokens than PEFT's)."""
    if targets is None:
        return
    named = _targeted(targets)
    if not any(named(m) for m in linear_shapes):
        kinds = sorted({m.rsplit(".", 1)[-1] for m in linear_shapes})[:8]
        raise bad_request(
            f"adapter {name!r}: target_modules {targets!r} names no linear layer of the base "
            f"model (its layers end in {', '.join(kinds)})",
            param="path",
            code="adapter_mismatch",
        )
    stray = sorted(m for m in pairs if not named(m))
    if stray:
        raise bad_request(
            f"adapter {name!r} holds weights for {stray[0]!r}, a module its target_modules "
            f"{targets!r} does not name (PEFT would leave them out): make them agree",
            param="path",
            code="adapter_mismatch",
        )


class LoraRegistry:
    """Registered adapters, the loaded ones in an LRU within ``budget_bytes``, and the hooks.

    Thread-safe: the server registers and acquires from the event loop, the batching thread
    reads :attr:`rows` and the loaded weights.
    """

    def __init__(
        self,
        model: Any,
        *,
        max_rank: int,
        budget_bytes: int,
        device: str = "cpu",
        dtype: Any = None,
    ) -> None:
        import torch

        self._model = model
        self.max_rank = max_rank
        self.budget_bytes = budget_bytes
        self._device = device
        self._dtype = dtype
        self._lock = threading.RLock()
        self._paths: dict[str, str] = {}
        self._loaded: OrderedDict[str, LoraAdapter] = OrderedDict()
        self._pins: dict[str, int] = {}
        self._linears: dict[str, Any] = {
            n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
        }
        self._hooked: set[str] = set()
        #: adapter name -> tensor of batch rows that use it, for the forward in progress
        self.rows: dict[str, Any] = {}
        self.loads = 0
        self.evictions = 0

    # registry ---------------------------------------------------------------------------
    def _shapes(self) -> dict[str, tuple[int, int]]:
        return {n: (m.in_features, m.out_features) for n, m in self._linears.items()}

    def register(self, name: str, path: str) -> AdapterInfo:
        """Register ``name`` at ``path`` and load it now, so that a bad adapter is a 400 here."""
        with self._lock:
            if name in self._pins and self._pins[name] > 0:
                raise OpenAIError(
                    409,
                    f"adapter {name!r} is serving requests; unload it when they finish",
                    param="name",
                    code="adapter_in_use",
                )
            adapter = read_adapter(
                name, Path(path), self._shapes(), self.max_rank, self._device, self._dtype
            )
            self._paths[name] = path
            self._loaded.pop(name, None)
            self._insert(adapter)
            return self._info(name)

    def unregister(self, name: str) -> None:
        with self._lock:
            if name not in self._paths:
                raise not_found(
                    f"no adapter named {name!r} is registered",
                    param="name",
                    code="adapter_not_found",
                )
            if self._pins.get(name, 0) > 0:
                raise OpenAIError(
                    409,
                    f"adapter {name!r} is serving requests; unload it when they finish",
                    param="name",
                    code="adapter_in_use",
                )
            del self._paths[name]
            self._loaded.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._paths

    def infos(self) -> list[AdapterInfo]:
        with self._lock:
            return [self._info(n) for n in sorted(self._paths)]

    def loaded_names(self) -> list[str]:
        """Loaded adapters, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def _info(self, name: str) -> AdapterInfo:
        loaded = self._loaded.get(name)
        return AdapterInfo(
            name=name,
            path=self._paths[name],
            rank=loaded.rank if loaded else 0,
            loaded=loaded is not None,
            size_bytes=loaded.size_bytes if loaded else 0,
        )

    # LRU ---------------------------------------------------------------------------------
    def _insert(self, adapter: LoraAdapter) -> None:
        if adapter.size_bytes > self.budget_bytes:
            raise bad_request(
                f"adapter {adapter.name!r} needs {adapter.size_bytes} bytes, over this "
                f"engine's LoRA memory budget of {self.budget_bytes} bytes "
                "(--lora-budget-mb)",
                param="path",
                code="adapter_too_large",
            )
        used = sum(a.size_bytes for a in self._loaded.values())
        for victim in list(self._loaded):
            if used + adapter.size_bytes <= self.budget_bytes:
                break
            if self._pins.get(victim, 0) > 0:
                continue
            used -= self._loaded.pop(victim).size_bytes
            self.evictions += 1
        if used + adapter.size_bytes > self.budget_bytes:
            raise overloaded(
                f"the LoRA memory budget is full of adapters serving requests; retry adapter "
                f"{adapter.name!r} shortly",
                code="adapter_budget_full",
            )
        for module in adapter.modules:
            self._hook(module)
        self._loaded[adapter.name] = adapter
        self.loads += 1

    def acquire(self, name: str) -> LoraAdapter:
        """Pin ``name`` for one sequence, loading it (and evicting the LRU) if it is not."""
        with self._lock:
            if name not in self._paths:
                raise not_found(f"no adapter named {name!r}", param="model", code="model_not_found")
            adapter = self._loaded.get(name)
            if adapter is None:
                adapter = read_adapter(
                    name,
                    Path(self._paths[name]),
                    self._shapes(),
                    self.max_rank,
                    self._device,
                    self._dtype,
                )
                self._insert(adapter)
            self._loaded.move_to_end(name)
            self._pins[name] = self._pins.get(name, 0) + 1
            return adapter

    def release(self, name: str) -> None:
        with self._lock:
            left = self._pins.get(name, 0) - 1
            if left > 0:
                self._pins[name] = left
            else:
                self._pins.pop(name, None)

    # hooks -------------------------------------------------------------------------------
    def _hook(self, module_name: str) -> None:
        if module_name in self._hooked:
            return
        self._linears[module_name].register_forward_hook(self._make_hook(module_name))
        self._hooked.add(module_name)

    def _make_hook(self, module_name: str) -> Any:
        def hook(_module: Any, inputs: tuple[Any, ...], output: Any) -> Any:
            if not self.rows:
                return None
            x = inputs[0]
            out = None
            for name, rows in self.rows.items():
                adapter = self._loaded.get(name)
                weights = adapter.modules.get(module_name) if adapter else None
                if weights is None:
                    continue
                a, b, scale = weights
                delta = (x[rows] @ a.T) @ b.T * scale
                if out is None:
                    out = output.clone()
                out[rows] = out[rows] + delta
            return out

        return hook
