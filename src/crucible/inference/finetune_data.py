"""Training data for fine-tuning: JSON lines, chat or prompt/completion, checked line by line.

Each line is one object, either ``{"messages": [{"role", "content"}, ...]}`` whose last
message is the assistant's answer, or ``{"prompt": "...", "completion": "..."}``. The loss is
taken on the answer (and the end-of-sequence token) only; the prompt is context.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DataError", "Example", "check_records", "load_examples"]

_ROLES = {"system", "developer", "user", "assistant", "tool"}


class DataError(ValueError):
    """The training file cannot be used; the message names the line and the problem."""


@dataclass(frozen=True)
class Example:
    prompt_ids: list[int]
    answer_ids: list[int]


def _line_error(path: Path, number: int, problem: str) -> DataError:
    return DataError(f"{path}:{number}: {problem}")


def _parse(path: Path, number: int, record: Any) -> tuple[list[dict[str, str]] | str, str]:
    if not isinstance(record, dict):
        raise _line_error(
            path,
            number,
            "each line must be a JSON object with 'messages', or 'prompt' and 'completion'",
        )
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or len(messages) < 2:
            raise _line_error(
                path,
                number,
                "'messages' must be a list of at least two "
                "messages (a prompt and the assistant's answer)",
            )
        for i, m in enumerate(messages):
            if (
                not isinstance(m, dict)
                or m.get("role") not in _ROLES
                or not isinstance(m.get("content"), str)
            ):
                raise _line_error(
                    path,
                    number,
                    f"messages[{i}] must be {{'role': one of "
                    f"{sorted(_ROLES)}, 'content': a string}}",
                )
        if messages[-1]["role"] != "assistant":
            raise _line_error(path, number, "the last message must be the assistant's answer")
        return [{"role": m["role"], "content": m["content"]} for m in messages[:-1]], messages[-1][
            "content"
        ]
    if "prompt" in record or "completion" in record:
        prompt, completion = record.get("prompt"), record.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str) or not completion:
            raise _line_error(
                path,
                number,
                "'prompt' and 'completion' must both be strings (the completion not empty)",
            )
        return prompt, completion
    raise _line_error(
        path,
        number,
        f"unknown record with keys {sorted(record)}: use 'messages', or 'prompt' and 'completion'",
    )


def _need_file(path: Path) -> None:
    if not path.is_file():
        what = (
            "is a folder"
            if path.is_dir()
            else "is not a regular file (a device or a pipe)"
            if path.exists()
            else "no such file"
        )
        raise DataError(f"{path}: {what} (the training data is a .jsonl file)")


def load_examples(path: Path, tokenizer: Any, *, max_length: int) -> list[Example]:
    """Read and tokenize ``path``; raise :class:`DataError` on the first bad line."""
    _need_file(path)
    examples: list[Example] = []
    eos = tokenizer.eos_token_id
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise _line_error(path, number, f"not valid JSON ({exc})") from exc
            context, answer = _parse(path, number, record)
            if isinstance(context, list):
                if not getattr(tokenizer, "chat_template", None):
                    raise _line_error(
                        path,
                        number,
                        "chat records need a base model with a "
                        "chat template; use prompt/completion",
                    )
                text = tokenizer.apply_chat_template(
                    context, add_generation_prompt=True, tokenize=False
                )
                prompt_ids = list(tokenizer.encode(str(text), add_special_tokens=False))
            else:
                prompt_ids = list(tokenizer.encode(context, add_special_tokens=False))
            answer_ids = list(tokenizer.encode(answer, add_special_tokens=False))
            if eos is not None:
                answer_ids.append(int(eos))
            if len(prompt_ids) + len(answer_ids) > max_length:
                raise _line_error(
                    path,
                    number,
                    f"{len(prompt_ids) + len(answer_ids)} tokens, over --max-length {max_length}",
                )
            examples.append(Example(prompt_ids, answer_ids))
    if not examples:
        raise DataError(f"{path}: no training examples (the file is empty)")
    return examples


# One example is a conversation or a prompt and completion: far below this.
_MAX_LINE = 16 << 20


def check_records(path: Path) -> int:
    """Check every line of ``path`` as :func:`load_examples` does, without a tokenizer (so a
    client can refuse bad data before a job is started); returns the number of examples.
    Raises :class:`DataError` naming the first bad line."""
    _need_file(path)
    count = 0
    with path.open(encoding="utf-8") as lines:
        try:
            for number, line in enumerate(iter(lambda: lines.readline(_MAX_LINE + 1), ""), 1):
                if len(line) > _MAX_LINE:
                    # A binary file, or one with no line ends: not read whole into memory.
                    raise _line_error(
                        path, number, f"longer than {_MAX_LINE >> 20} MiB (is it JSON lines?)"
                    )
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise _line_error(path, number, f"not valid JSON ({exc})") from exc
                _parse(path, number, record)
                count += 1
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text (the training data is JSON lines)") from exc
    if not count:
        raise DataError(f"{path}: no training examples (the file is empty)")
    return count
