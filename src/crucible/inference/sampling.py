"""Choosing the next token from logits: greedy, temperature, nucleus (top_p), logprobs.

Used by the transformers engine (torch is imported by the caller; this module takes and
returns plain values around torch tensors).
"""

from __future__ import annotations

from typing import Any

from crucible.inference.engine import SamplingParams, TokenStep

__all__ = ["choose_token"]


def choose_token(logits: Any, params: SamplingParams, generator: Any) -> TokenStep:
    """Pick one token from a 1-D logits tensor. Logprobs are those of the model's own
    distribution (before temperature and top_p), as OpenAI reports them."""
    import torch

    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    if params.temperature <= 0.0:
        token = int(torch.argmax(logits).item())
    else:
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_p, dim=-1)
            # keep the smallest prefix whose mass reaches top_p (always the first token)
            drop = cumulative - sorted_p >= params.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
        token = int(torch.multinomial(probs, 1, generator=generator).item())
    top: list[tuple[int, float]] = []
    if params.top_logprobs > 0:
        values, ids = torch.topk(logp, min(params.top_logprobs, logp.shape[-1]))
        top = [(int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
    return TokenStep(token_id=token, logprob=float(logp[token].item()), top_logprobs=top)
