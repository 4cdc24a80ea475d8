"""A tiny random Llama and a byte-level tokenizer, built offline for the inference tests.

The model has random weights (fixed seed) and tiny dimensions, so a forward pass takes
milliseconds on a CPU; it is saved with ``save_pretrained`` like any checkpoint on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def build_tokenizer(out: Path) -> Any:
    """A byte-level BPE tokenizer with no merges: every byte is a token, nothing unknown."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    return fast


def build_tiny_llama(
    out: Path, *, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 4
) -> Path:
    """Write a tiny random Llama (config, safetensors weights, tokenizer) to ``out``; with a
    larger ``hidden``, ``layers`` and ``heads`` (key/value heads: half of them) it is a random
    model big enough for a GPU to matter (benchmarks/bench_inference.py)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    # Random init gives near-uniform logits; scale the head so greedy choices are clear-cut.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(str(out))
    return out


def build_random_lora(
    base: Path,
    out: Path,
    *,
    rank: int = 4,
    seed: int = 1,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    alpha: int = 8,
) -> Path:
    """A PEFT LoRA adapter for ``base`` with random A and B (B is zero in a fresh adapter)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base))
    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets))
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    peft_model.save_pretrained(str(out))
    return out


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


SMOLLM2_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj")


def smollm2_lora(
    path: Path,
    seed: int,
    *,
    rank: int = 8,
    alpha: int = 16,
    targets: tuple[str, ...] = SMOLLM2_TARGETS,
    layers: int = 30,
) -> Path:
    """A PEFT LoRA adapter for SmolLM2-135M (its layer shapes) with random A and B (B is
    zero when PEFT makes one, which would change nothing)."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    dims = {
        "q_proj": (576, 576),
        "k_proj": (576, 192),
        "v_proj": (576, 192),
        "o_proj": (576, 576),
        "up_proj": (576, 1536),
        "gate_proj": (576, 1536),
        "down_proj": (1536, 576),
    }
    tensors = {}
    for layer in range(layers):
        for target in targets:
            part = "mlp" if target.endswith(("up_proj", "gate_proj", "down_proj")) else "self_attn"
            in_f, out_f = dims[target]
            key = f"base_model.model.model.layers.{layer}.{part}.{target}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, in_f, generator=gen) * 0.05
            tensors[f"{key}.lora_B.weight"] = torch.randn(out_f, rank, generator=gen) * 0.05
    path.mkdir(parents=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "r": rank,
                "lora_alpha": alpha,
                "target_modules": list(targets),
                "lora_dropout": 0.0,
                "bias": "none",
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": "SmolLM2-135M-Instruct",
            }
        )
    )
    return path
