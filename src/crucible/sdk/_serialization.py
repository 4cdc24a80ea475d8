"""Arguments, results and exceptions as bytes (cloudpickle), on the SDK and worker side only.

The control plane never unpickles: it stores these bytes and forwards them.
"""

from __future__ import annotations

import traceback
from typing import Any

import cloudpickle

from crucible.errors import RemoteError, error_from_wire
from crucible.protocol.common import ErrorInfo, Payload

__all__ = ["deserialize", "error_info_from_exception", "exception_from_error", "serialize"]


def serialize(obj: Any) -> bytes:
    return cloudpickle.dumps(obj, protocol=5)  # type: ignore[no-any-return]


def deserialize(data: bytes) -> Any:
    return cloudpickle.loads(data)


def error_info_from_exception(exc: BaseException) -> ErrorInfo:
    """What the worker sends when the user's function raised."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc_type = f"{type(exc).__module__}.{type(exc).__qualname__}"
    pickled: Payload | None = None
    try:
        data = serialize(exc)
        if len(data) < 1024 * 1024:
            pickled = Payload.inline(data)
    except Exception:
        pickled = None  # an exception that cannot be pickled still reaches the caller by name
    return ErrorInfo(
        code=RemoteError.code,
        message=str(exc)[:10_000],
        exc_type=exc_type,
        traceback=tb[-50_000:],
        exception=pickled,
    )


def exception_from_error(info: ErrorInfo) -> BaseException:
    """The exception to raise for a failed call: the remote exception's own type when it can
    be rebuilt here (with the remote traceback as a note), else a crucible error."""
    if info.code != RemoteError.code:
        return error_from_wire(info.code, info.message)
    if info.exception is not None and info.exception.data is not None:
        try:
            exc = deserialize(info.exception.raw())
            if isinstance(exc, BaseException):
                if info.traceback:
                    exc.add_note(f"\nRemote traceback:\n{info.traceback}")
                return exc
        except Exception:
            pass
    return RemoteError(
        info.message, exc_type=info.exc_type or "", remote_traceback=info.traceback or ""
    )
