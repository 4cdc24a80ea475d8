"""How the worker sends a web response that streams: its start and first body parts leave
at once (a model's stream opens with a role-only chunk, then its first token; the first
token must not wait for the batch timer), and a small whole response is held for the
output."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crucible.protocol import json_payload
from crucible.protocol.apps import CodeRef
from crucible.protocol.common import Payload, Resources
from crucible.protocol.containers import ContainerAssignment, InputAssignment
from crucible.worker.main import Worker


class _Recorder:
    """The worker's transport, recording what it posts (the server's side is an edge here)."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert path.endswith("/items")
        for p in body["items"]:
            self.items.append(json_payload.decode(base64.b64decode(p["data"])))
        return {"consumed": body["start"] + len(body["items"])}


def _worker(tmp_path: Path) -> tuple[Worker, _Recorder]:
    assignment = ContainerAssignment(
        container_id="co-1",
        function_id="fn-1",
        account_id="acct",
        app_id="ap-1",
        code=CodeRef(bundle="0" * 64, module="m", qualname="f"),
        resources=Resources(),
        token="t",
        web={"kind": "asgi_app"},
    )
    recorder = _Recorder()
    worker = Worker(assignment, recorder, tmp_path)  # type: ignore[arg-type]
    worker.fn = lambda: None
    return worker, recorder


def _body(text: str, more: bool) -> dict[str, Any]:
    return {"body": base64.b64encode(text.encode()).decode(), "more": more}


def test_the_first_token_of_a_stream_is_sent_before_the_next_is_made(tmp_path: Path) -> None:
    worker, sent = _worker(tmp_path)
    seen_when_asked: list[int] = []

    def stream() -> Iterator[dict[str, Any]]:
        yield {"status": 200, "headers": [["content-type", "text/event-stream"]]}
        yield _body('data: {"role": "assistant"}\n\n', True)
        yield _body('data: {"content": "Hi"}\n\n', True)
        # The model works on its next token now: the first one has reached the server.
        seen_when_asked.append(len(sent.items))
        yield _body('data: {"content": "!"}\n\n', True)
        yield _body("", False)

    item = InputAssignment(call_id="rq-1", attempt=1, args=Payload.inline(b""), timeout_s=30)
    held: list[bytes] = []
    count = worker._stream(item, (), {}, source=stream, as_json=True, hold=held)
    assert seen_when_asked == [3]
    assert count == 5 and held == [] and len(sent.items) == 5


def test_a_small_whole_response_is_held_for_the_output(tmp_path: Path) -> None:
    worker, sent = _worker(tmp_path)

    def whole() -> Iterator[dict[str, Any]]:
        yield {"status": 200, "headers": []}
        yield _body('{"hello": "ada"}', False)

    item = InputAssignment(call_id="rq-2", attempt=1, args=Payload.inline(b""), timeout_s=30)
    held: list[bytes] = []
    assert worker._stream(item, (), {}, source=whole, as_json=True, hold=held) == 0
    assert len(held) == 2 and sent.items == []
