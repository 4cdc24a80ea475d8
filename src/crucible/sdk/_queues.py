"""``crucible.Queue``: a durable FIFO queue shared by the calls and clients of an account, in
partitions (the default one is unnamed). Values are pickled by the SDK; the exchange stores
opaque bytes. Each item is delivered to exactly one ``get``."""

from __future__ import annotations

import base64
import queue
import time
from collections.abc import Iterable
from typing import Any

from crucible.errors import InvalidRequestError, QuotaExceededError
from crucible.protocol.coordination import MAX_VALUE_B64, QueueInfo, QueueItems
from crucible.protocol.transport import url_part
from crucible.sdk._client import Client
from crucible.sdk._serialization import STORED_ADVICE, deserialize, serialize_value

__all__ = ["Queue"]

_POLL_S = 50.0  # one long poll (the server caps each at 60 s); longer waits loop


def _partition(partition: str | None) -> str:
    if partition is None:
        return ""
    if not isinstance(partition, str) or not partition:
        raise InvalidRequestError("partition= must be a non-empty string or None")
    return partition


class Queue:
    """``Queue.from_name("jobs", create_if_missing=True)``; then ``q.put(v)``,
    ``q.put_many([...])``, ``q.get()`` (blocks; ``timeout=`` raises ``queue.Empty``),
    ``q.get_many(n)``, ``q.len()``, ``q.clear()``; every method takes ``partition=``."""

    def __init__(self, name: str, client: Client) -> None:
        self.name = name
        self._client = client

    def __repr__(self) -> str:
        return f"Queue.from_name({self.name!r})"

    @classmethod
    def from_name(
        cls, name: str, *, create_if_missing: bool = False, client: Client | None = None
    ) -> Queue:
        client = client or Client.from_settings()
        client.post("/v1/queues", {"name": name, "create_if_missing": create_if_missing})
        return cls(name, client)

    @staticmethod
    def delete(name: str, *, client: Client | None = None) -> None:
        client = client or Client.from_settings()
        client.transport.request("DELETE", f"/v1/queues/{url_part(name)}")

    def info(self) -> QueueInfo:
        return QueueInfo.model_validate(self._client.get(f"/v1/queues/{self.name}"))

    def put(
        self,
        value: Any,
        *,
        block: bool = True,
        timeout: float | None = None,
        partition: str | None = None,
    ) -> None:
        """Append an item. A full queue (``CRUCIBLE_QUEUE_MAX_ITEMS``) is waited on while
        ``block`` (up to ``timeout`` seconds; None: for ever); then ``queue.Full``."""
        self.put_many([value], block=block, timeout=timeout, partition=partition)

    def put_many(
        self,
        values: Iterable[Any],
        *,
        block: bool = True,
        timeout: float | None = None,
        partition: str | None = None,
    ) -> None:
        """Append items, in order (see :meth:`put` for a full queue)."""
        if timeout is not None and (isinstance(timeout, bool) or timeout < 0):
            raise InvalidRequestError(f"timeout={timeout!r} must be seconds >= 0 or None")
        deadline = None if timeout is None else time.monotonic() + timeout
        encoded = []
        for v in values:
            raw = serialize_value(v, f"an item of Queue {self.name!r}", advice=STORED_ADVICE)
            data = base64.b64encode(raw).decode("ascii")
            if len(data) > MAX_VALUE_B64:
                raise InvalidRequestError(
                    f"a Queue item of {len(data) * 3 // 4} bytes is too large (at most "
                    f"{MAX_VALUE_B64 * 3 // 4})"
                )
            encoded.append(data)
        part = _partition(partition)
        for start in range(0, len(encoded), 1000):
            body = {"values": encoded[start : start + 1000], "partition": part}
            pause = 0.05
            while True:
                try:
                    self._client.post(f"/v1/queues/{self.name}/put", body)
                    break
                except QuotaExceededError as exc:  # full: wait for consumers
                    left = None if deadline is None else deadline - time.monotonic()
                    if not block or (left is not None and left <= 0):
                        raise queue.Full(exc.message) from None
                    time.sleep(pause if left is None else min(pause, left))
                    pause = min(1.0, pause * 2)

    def get_many(
        self,
        n: int,
        *,
        block: bool = True,
        timeout: float | None = None,
        partition: str | None = None,
    ) -> list[Any]:
        """Up to ``n`` items, waiting (if ``block``) up to ``timeout`` seconds (None: for ever)
        for the first; an empty list when none came."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1000:
            raise InvalidRequestError(f"n={n!r} must be an int in [1, 1000]")
        if timeout is not None and (isinstance(timeout, bool) or timeout < 0):
            raise InvalidRequestError(f"timeout={timeout!r} must be seconds >= 0 or None")
        part = _partition(partition)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = 0.0
            if block:
                left = _POLL_S if deadline is None else max(0.0, deadline - time.monotonic())
                wait = min(_POLL_S, left)
            got = QueueItems.model_validate(
                self._client.transport.post(
                    f"/v1/queues/{self.name}/get",
                    {"n": n, "partition": part, "timeout_s": wait},
                    timeout_s=wait + 30,
                )
            )
            if got.values:
                return [deserialize(base64.b64decode(v)) for v in got.values]
            if not block or (deadline is not None and time.monotonic() >= deadline):
                return []

    def get(
        self, *, block: bool = True, timeout: float | None = None, partition: str | None = None
    ) -> Any:
        """The next item; raises ``queue.Empty`` when none came in time (or at once when
        ``block=False``)."""
        items = self.get_many(1, block=block, timeout=timeout, partition=partition)
        if not items:
            raise queue.Empty(f"queue {self.name!r} had no item")
        return items[0]

    def len(self, *, partition: str | None = None, total: bool = False) -> int:
        """Items in one partition (the default one unless named), or in all with ``total``."""
        info = self.info()
        if total:
            return info.items
        return info.partitions.get(_partition(partition), 0)

    def clear(self, *, partition: str | None = None, all: bool = False) -> None:
        """Remove the items of one partition (the default unless named), or of all."""
        body = {"partition": _partition(partition), "all": all}
        self._client.post(f"/v1/queues/{self.name}/clear", body)
