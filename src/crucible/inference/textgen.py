"""From token steps to text: incremental detokenization, stop strings and usage.

:func:`run_choice` drives one sequence of an engine and yields :class:`TextDelta` pieces.
Text that could be the start of a stop string, or an incomplete UTF-8 character, is held
back until it is known; at a stop string the text is cut before it, the sequence is
cancelled and the finish reason is "stop".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from crucible.inference.engine import Engine, GenerationRequest, TokenStep

__all__ = ["TextDelta", "run_choice"]


@dataclass
class TextDelta:
    text: str
    steps: list[TokenStep] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` could begin a stop string."""
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    return hold


async def run_choice(
    engine: Engine, request: GenerationRequest, stops: list[str]
) -> AsyncIterator[TextDelta]:
    ids: list[int] = []
    sent = 0
    produced = 0
    pending: list[TokenStep] = []
    stream = engine.generate(request)
    try:
        async for step in stream:
            pending.append(step)
            produced += 1
            if step.finish_reason is None or step.token_id not in engine.eos_token_ids:
                ids.append(step.token_id)
            text = engine.decode(ids)
            cut = min(
                (i for i in (text.find(s, max(0, sent - len(s))) for s in stops) if i >= 0),
                default=-1,
            )
            if cut >= 0:
                yield TextDelta(text[sent:cut], pending, "stop", produced)
                return
            if step.finish_reason is not None:
                yield TextDelta(text[sent:], pending, step.finish_reason, produced)
                return
            end = len(text) - _held_back(text, stops)
            if text.endswith("\ufffd"):
                end = min(end, len(text) - 1)
            if end > sent:
                yield TextDelta(text[sent:end], pending, None, produced)
                sent = end
                pending = []
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
