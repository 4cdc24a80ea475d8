"""Frames of the web channel: one WebSocket per container that serves a web endpoint, dialled
by the worker to ``/v1/containers/{id}/channel``, on which the server pushes the gateway's
requests and the worker pushes their responses, many requests at once, each frame naming its
request. One message each way for a plain request, instead of a long poll answered and an
output posted (the route: docs/reference/api.md).

A frame is one binary WebSocket message: a JSON header, a newline, then raw bytes (a body
part; empty when the frame has none). Headers, by ``t``:

server to worker
    ``req``   a request: ``id``, ``timeout_s``, ``http`` (method, path, query, headers);
              the bytes are its whole body.
    ``ack``   ``id``, ``n``: the gateway's reader has taken ``n`` frames of that response
              (the worker sends at most :data:`WINDOW` frames ahead: back-pressure).

worker to server
    ``start`` ``id``, ``status``, ``headers``, ``more``: the response begins, with its first
              body part in the bytes (``more`` false: that was all of it).
    ``body``  ``id``, ``more``: a further body part.
    ``error`` ``id``, ``code``, ``message``: the app failed (before or while answering); with
              the code :data:`BUSY` the request was not run (the container is running as
              many inputs as it may, calls from its exchange included): the gateway makes it
              a call.
    ``drain`` the worker is stopping: no new requests.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["ACK_EVERY", "BUSY", "FRAME_BODY_MAX", "WINDOW", "decode_frame", "encode_frame"]

# The error code of a request the worker sent back unrun.
BUSY = "busy"

# Frames of one response the worker may send beyond what the gateway's reader acknowledged.
WINDOW = 64
# The server acknowledges after this many frames read (a quarter of the window: the worker
# rarely waits while the reader keeps up).
ACK_EVERY = WINDOW // 4
# A response body message larger than this is sent as several frames.
FRAME_BODY_MAX = 256 * 1024


def encode_frame(header: dict[str, Any], data: bytes = b"") -> bytes:
    return orjson.dumps(header) + b"\n" + data


def decode_frame(message: bytes) -> tuple[dict[str, Any], bytes]:
    """A frame's header and bytes; ValueError when it is not a frame."""
    cut = message.find(b"\n")
    if cut < 0:
        raise ValueError("a web channel frame needs a JSON header and a newline")
    header = orjson.loads(message[:cut])
    if not isinstance(header, dict) or not isinstance(header.get("t"), str):
        raise ValueError("a web channel frame's header must be an object with a type 't'")
    return header, message[cut + 1 :]
