"""A web endpoint's response carried in its call's output.

The worker runs each gateway request through the endpoint's ASGI app and yields the
response as JSON parts: ``{"status", "headers"}`` first, then ``{"body": base64, "more"}``
chunks. A response still being produced streams to the gateway as the call's items; a small
one that was complete before its first part was sent rides in the call's output instead, as
``{"web_response": [part, ...]}`` (a JSON payload, see json_payload), so that a plain
request costs one exchange.
"""

from __future__ import annotations

from typing import Any

import orjson

from crucible.protocol.json_payload import MAGIC

__all__ = ["WEB_RESPONSE_PREFIX", "decode_response", "encode_response"]

WEB_RESPONSE_PREFIX = MAGIC + b'{"web_response":['


def encode_response(parts: list[bytes]) -> bytes:
    """The output holding ``parts``: each one JSON object (without json_payload's marker)."""
    return WEB_RESPONSE_PREFIX + b",".join(parts) + b"]}"


def decode_response(output: bytes) -> list[dict[str, Any]] | None:
    """The response parts in a call's output; None when the output holds none (the response
    streamed as items, and the output is their count)."""
    if not output.startswith(WEB_RESPONSE_PREFIX):
        return None
    parts = orjson.loads(output[len(MAGIC) :])["web_response"]
    return parts if isinstance(parts, list) else None
