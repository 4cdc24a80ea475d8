"""Where the code runs: ``crucible.is_local()`` and ``crucible.current_function_call_id()``
(Modal's names), for code shared between a laptop and its containers."""

from __future__ import annotations

import os

__all__ = ["current_function_call_id", "is_local"]


def is_local() -> bool:
    """True on your machine, False inside a container the exchange started."""
    return not os.environ.get("CRUCIBLE_CONTAINER_ID")


def current_function_call_id() -> str | None:
    """In a container: the id of the call (``ca-...``) or web request (``rq-...``) the
    calling thread or task is handling (what ``crucible call`` and the logs show); None
    outside a call and on your machine."""
    if is_local():
        return None
    from crucible.worker.logs import current_call_id  # a container's worker module

    return current_call_id()
