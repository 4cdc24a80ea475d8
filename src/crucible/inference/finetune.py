"""``python -m crucible.inference.finetune``: train a LoRA adapter the model server loads.

    python -m crucible.inference.finetune --base DIR --data train.jsonl --method lora \\
        --rank 16 --epochs 3 --lr 2e-4 --out DIR

Prints one JSON object per line on stdout, which a fine-tune job streams: ``{"event":
"start", ...}``, ``{"event": "step", "step", "epoch", "loss", "lr"}`` per optimizer step,
``{"event": "checkpoint", "step", "path"}`` and ``{"event": "done", "adapter", "final_loss"}``.
Checkpoints go to ``OUT/checkpoints/step-N`` (PEFT format); the adapter itself to ``OUT``.
Bad arguments or data exit with status 2 and ``{"event": "error", "message"}``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from crucible.inference.finetune_data import DataError, Example, load_examples

__all__ = ["main", "train"]

DEFAULT_TARGETS = "q_proj,k_proj,v_proj,o_proj"


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m crucible.inference.finetune",
        description="Fine-tune a LoRA adapter on a local model.",
    )
    p.add_argument("--base", required=True, type=Path, help="base model directory")
    p.add_argument("--data", required=True, type=Path, help="training data (.jsonl)")
    p.add_argument("--method", default="lora", help="only 'lora'")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default 2 x rank)")
    p.add_argument(
        "--target-modules",
        default=DEFAULT_TARGETS,
        help="comma-separated linear layer names to adapt",
    )
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="save a checkpoint every N steps (0: at the end of each epoch)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, type=Path, help="where the adapter is written")
    return p


def _check(args: argparse.Namespace) -> None:
    if args.method != "lora":
        raise DataError(f"--method {args.method!r} is not supported: use --method lora")
    for name in ("rank", "epochs", "batch_size", "max_length"):
        if getattr(args, name) < 1:
            raise DataError(f"--{name.replace('_', '-')} must be at least 1")
    if not args.lr > 0:
        raise DataError("--lr must be positive")
    if not (args.base / "config.json").is_file():
        raise DataError(f"--base {args.base}: not a model directory (no config.json)")


def _batch(examples: list[Example], pad_id: int) -> tuple[Any, Any, Any]:
    import torch

    longest = max(len(e.prompt_ids) + len(e.answer_ids) for e in examples)
    ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, e in enumerate(examples):
        seq = e.prompt_ids + e.answer_ids
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, len(e.prompt_ids) : len(seq)] = torch.tensor(e.answer_ids)
        mask[row, : len(seq)] = 1
    return ids, labels, mask


def train(args: argparse.Namespace) -> Path:
    """Train and write the adapter; returns its directory. Raises DataError on bad input."""
    _check(args)
    from crucible.inference.transformers_engine import offline_hub

    offline_hub()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(args.base), local_files_only=True)
    examples = load_examples(args.data, tokenizer, max_length=args.max_length)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    model: Any = AutoModelForCausalLM.from_pretrained(str(args.base), local_files_only=True)
    targets = [t.strip() for t in args.target_modules.split(",") if t.strip()]
    present = {
        n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    }
    missing = [t for t in targets if t not in present]
    if missing:
        raise DataError(
            f"--target-modules {','.join(missing)} not in the base model; its "
            f"linear layers are {','.join(sorted(present))}"
        )
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=args.rank,
            lora_alpha=args.alpha or 2 * args.rank,
            target_modules=targets,
            lora_dropout=0.0,
            bias="none",
        ),
    )
    peft_model.to(args.device).train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    steps_per_epoch = -(-len(examples) // args.batch_size)
    _emit(
        "start",
        examples=len(examples),
        epochs=args.epochs,
        steps=steps_per_epoch * args.epochs,
        trainable_parameters=sum(p.numel() for p in trainable),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    step = 0
    loss_value = float("nan")
    started = time.monotonic()
    for epoch in range(1, args.epochs + 1):
        order = list(examples)
        random.shuffle(order)
        for start in range(0, len(order), args.batch_size):
            ids, labels, mask = _batch(order[start : start + args.batch_size], pad_id)
            out = peft_model(
                input_ids=ids.to(args.device),
                attention_mask=mask.to(args.device),
                labels=labels.to(args.device),
            )
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            step += 1
            loss_value = float(out.loss.item())
            _emit(
                "step",
                step=step,
                epoch=epoch,
                loss=round(loss_value, 6),
                lr=args.lr,
                elapsed_s=round(time.monotonic() - started, 3),
            )
            if args.checkpoint_every and step % args.checkpoint_every == 0:
                _checkpoint(peft_model, args.out, step)
        if not args.checkpoint_every:
            _checkpoint(peft_model, args.out, step)
    peft_model.save_pretrained(str(args.out), safe_serialization=True)
    _emit("done", adapter=str(args.out), steps=step, final_loss=round(loss_value, 6))
    return Path(args.out)


def _checkpoint(model: Any, out: Path, step: int) -> None:
    path = out / "checkpoints" / f"step-{step}"
    model.save_pretrained(str(path), safe_serialization=True)
    _emit("checkpoint", step=step, path=str(path))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        train(args)
    except DataError as exc:
        _emit("error", message=str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
