"""LoRA adapters in llama.cpp's GGUF form: checking them, and converting PEFT adapters.

llama.cpp serves a LoRA adapter from a GGUF file (``general.type`` = ``adapter``,
``adapter.type`` = ``lora``) holding, for each adapted weight ``W`` of the base (``blk.N.
attn_q.weight``...), ``W.lora_a`` with ``ne = [in, r]`` and ``W.lora_b`` with ``ne = [r, out]``.
It adds ``scale * B(A(x))`` to ``W x``, where ``scale`` = ``adapter.lora.alpha / r`` (or 1
when the alpha is 0). This is the layout of llama.cpp's ``convert_lora_to_gguf.py``.

:func:`convert_peft` writes that file from a PEFT adapter directory. It reads and checks the
adapter with :func:`crucible.inference.lora.read_adapter` (the transformers engine's checks:
rank limit, every target module a linear layer of the base with matching shapes), maps each
PEFT module to the base's GGUF tensor name with the ``gguf`` package's name tables, and
bakes PEFT's own per-module scale (``alpha / r``, rsLoRA, ``alpha_pattern``) into B so the
file's alpha is 0. Like llama.cpp's converter it permutes the rows of B for the query and key
projections of ``llama`` models, whose GGUF weights are stored permuted for llama.cpp's RoPE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crucible.inference.api_errors import RANK_HINT, OpenAIError, bad_request

__all__ = ["BaseTensors", "check_gguf_lora", "convert_peft"]

# architectures whose PEFT adapters this module converts; others: bring a GGUF LoRA
_PERMUTED_QK = {"llama"}
_CONVERTIBLE = _PERMUTED_QK


@dataclass(frozen=True)
class BaseTensors:
    """What the base model's GGUF file says about its weights."""

    arch: str
    n_head: int
    n_head_kv: int
    #: GGUF tensor name ("blk.0.attn_q.weight") -> (in_features, out_features)
    shapes: dict[str, tuple[int, int]]

    @classmethod
    def read(cls, path: Path) -> BaseTensors:
        import gguf

        reader = gguf.GGUFReader(str(path))
        arch = str(reader.fields["general.architecture"].contents())

        def number(key: str, default: int) -> int:
            field = reader.fields.get(f"{arch}.{key}")
            return int(field.contents()) if field is not None else default

        n_head = number("attention.head_count", 0)
        shapes = {
            t.name: (int(t.shape[0]), int(t.shape[1])) for t in reader.tensors if len(t.shape) == 2
        }
        return cls(
            arch=arch,
            n_head=n_head,
            n_head_kv=number("attention.head_count_kv", n_head),
            shapes=shapes,
        )

    def peft_names(self) -> dict[str, str]:
        """PEFT module name ("model.layers.0.self_attn.q_proj") -> GGUF weight name, for
        every 2-D weight of the base the ``gguf`` package's tables know a Hugging Face name
        for."""
        import gguf

        archs = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
        if self.arch not in archs:
            return {}
        blocks = 1 + max(
            (int(n.split(".")[1]) for n in self.shapes if n.startswith("blk.")), default=-1
        )
        table = gguf.get_tensor_name_map(archs[self.arch], blocks)
        return {
            hf: f"{name}.weight"
            for hf, (_kind, name) in table.mapping.items()
            if f"{name}.weight" in self.shapes
        }


def _error(path: Path, problem: str, code: str = "invalid_adapter") -> OpenAIError:
    return bad_request(f"adapter at {path}: {problem}", param="path", code=code)


def check_gguf_lora(name: str, path: Path, base: BaseTensors, max_rank: int) -> tuple[int, int]:
    """Check a GGUF LoRA file against the base; return (rank, size in bytes) or raise a 400
    naming the problem."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:
        raise _error(path, f"not a readable GGUF file ({exc})") from exc

    def text(key: str) -> str | None:
        field = reader.fields.get(key)
        return None if field is None else str(field.contents())

    if text("general.type") != "adapter" or text("adapter.type") != "lora":
        raise _error(
            path,
            "this GGUF file is not a LoRA adapter (general.type 'adapter', adapter.type 'lora')",
        )
    if text("general.architecture") != base.arch:
        raise bad_request(
            f"adapter {name!r} is for architecture "
            f"{text('general.architecture')!r}, the base model is {base.arch!r}",
            param="path",
            code="adapter_mismatch",
        )
    tensors = {t.name: t for t in reader.tensors}
    rank = 0
    size = 0
    for tname, a in tensors.items():
        if not tname.endswith(".lora_a"):
            if not tname.endswith(".lora_b"):
                raise _error(path, f"tensor {tname!r} is not a LoRA matrix")
            continue
        weight = tname.removesuffix(".lora_a")
        b = tensors.get(f"{weight}.lora_b")
        if b is None:
            raise _error(path, f"{weight!r} has lora_a but no lora_b")
        if weight not in base.shapes:
            raise bad_request(
                f"adapter {name!r}: target {weight!r} does not match the base "
                "model (it has no such weight)",
                param="path",
                code="adapter_mismatch",
            )
        in_f, out_f = base.shapes[weight]
        r = int(a.shape[1])
        if int(a.shape[0]) != in_f or int(b.shape[1]) != out_f or int(b.shape[0]) != r:
            raise bad_request(
                f"adapter {name!r}: target {weight!r} does not match the base model: the base "
                f"maps {in_f} -> {out_f} features, the adapter's lora_a is "
                f"{list(a.shape)} and lora_b {list(b.shape)} (GGUF order)",
                param="path",
                code="adapter_mismatch",
            )
        rank = max(rank, r)
        size += int(a.n_bytes) + int(b.n_bytes)
    if rank == 0:
        raise _error(path, "this GGUF LoRA holds no lora_a/lora_b tensors")
    if rank > max_rank:
        raise bad_request(
            f"adapter {name!r} has rank {rank}, over this engine's limit of {max_rank} "
            + RANK_HINT,
            param="path",
            code="adapter_rank_too_large",
        )
    return rank, size


def _permute_rows(b: Any, n_head: int) -> Any:
    """llama.cpp's ``LlamaModel.permute`` on the output rows of a (out, r) matrix."""
    return (
        b.reshape(n_head, 2, b.shape[0] // n_head // 2, *b.shape[1:])
        .swapaxes(1, 2)
        .reshape(b.shape)
    )


def convert_peft(
    name: str, peft_dir: Path, base: BaseTensors, max_rank: int, dest: Path
) -> tuple[int, int]:
    """Write the PEFT adapter in ``peft_dir`` as a GGUF LoRA at ``dest`` for ``base``; return
    (rank, size in bytes). A 400 names what does not fit (rank, target modules, format)."""
    import gguf
    import numpy as np

    from crucible.inference.lora import read_adapter

    names = base.peft_names()
    if base.arch not in _CONVERTIBLE:
        raise bad_request(
            f"adapter {name!r}: PEFT adapters are converted for {sorted(_CONVERTIBLE)} models "
            f"only, this base is {base.arch!r}; convert it with llama.cpp's "
            "convert_lora_to_gguf.py and add the .gguf file",
            param="path",
            code="adapter_mismatch",
        )
    shapes = {hf: base.shapes[gguf_name] for hf, gguf_name in names.items()}
    try:
        adapter = read_adapter(name, peft_dir, shapes, max_rank)
    except ImportError as exc:
        raise _error(
            peft_dir,
            "reading a PEFT adapter needs torch and safetensors here; "
            "install them, or add the adapter as a GGUF LoRA",
        ) from exc
    writer = gguf.GGUFWriter(str(dest), base.arch)
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    # 0: llama.cpp applies no alpha / r of its own; PEFT's scale is baked into B below
    writer.add_float32("adapter.lora.alpha", 0.0)
    size = 0
    for module, (a, b, scale) in sorted(adapter.modules.items()):
        weight = names[module]
        a_np = a.float().numpy().astype(np.float32)
        b_np = (b.float().numpy() * scale).astype(np.float32)
        if base.arch in _PERMUTED_QK and weight.endswith((".attn_q.weight", ".attn_k.weight")):
            heads = base.n_head if ".attn_q." in weight else base.n_head_kv
            b_np = _permute_rows(b_np, heads)
        writer.add_tensor(f"{weight}.lora_a", np.ascontiguousarray(a_np))
        writer.add_tensor(f"{weight}.lora_b", np.ascontiguousarray(b_np))
        size += a_np.nbytes + b_np.nbytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return adapter.rank, size
