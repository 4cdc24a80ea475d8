"""The one error root of Crucible, shared by the SDK, the server and the agent.

Exception tree::

    Error                              code               HTTP
    ├── InvalidRequestError            invalid_request    400  (and the variants below)
    │   ├── PayloadTooLargeError       payload_too_large  413
    │   ├── InvalidGpuError            invalid_gpu        400
    │   ├── InvalidResourcesError      invalid_resources  400
    │   └── SerializationError         serialization_error 400 (and why a call failed: an
    │                                                      argument, result, item or exception
    │                                                      that cannot be pickled)
    ├── AuthError                      unauthorized       401
    ├── PermissionDeniedError          forbidden          403
    ├── NotFoundError                  not_found          404
    ├── ConflictError                  conflict           409
    │   └── HostSupersededError        host_superseded    409 (a host's agent process that
    │                                                      another registration replaced)
    ├── QuotaExceededError             quota_exceeded     413
    ├── RateLimitedError               rate_limited       429 (with Retry-After)
    ├── InsufficientCreditError        insufficient_credit 402 (also why queued calls failed)
    ├── MarketRefusedError             market_refused     422 (and why a call failed)
    ├── ResourcesUnsatisfiableError    resources_unsatisfiable  ┐ why a call failed: carried in
    ├── FunctionTimeoutError           function_timeout         │ the call's error, never as an
    ├── CallCancelledError             call_cancelled           │ HTTP status (their http_status
    ├── ContainerExitedError           container_exited         ┘ is not used on the wire)
    ├── RemoteError                    remote_error       (the function raised an exception that
    │                                                      cannot be rebuilt on this side)
    ├── ImageBuildError                image_build_failed       ┐ raised by an agent; a call
    ├── ImagePullError                 image_pull_failed        │ sees them in its error
    │   ├── ImageNotFoundError         image_not_found          │ (OCI images: the registry,
    │   ├── ImageDigestError           image_digest_mismatch    │ a blob's digest, the size
    │   ├── ImageTooLargeError         image_too_large          │ limit, no usable Python)
    │   └── ImageUnsupportedError      image_unsupported        │
    ├── SandboxUnavailableError        sandbox_unavailable      ┘
    ├── ServerUnavailableError         server_unavailable 503 / connection refused
    │   └── StoreUnavailableError      store_unavailable  503 (its database, for a moment)
    ├── BadGatewayError                bad_gateway        502 (a web endpoint's app answered
    │                                                      what HTTP cannot carry)
    ├── SettingError                   invalid_setting    (a process's own settings, at
    │                                                      start: never on the wire; also
    │                                                      a ValueError)
    └── InternalError                  internal           500

The server answers every error as ``{"error": {"code": ..., "message": ...}}``; the SDK turns
the code back into the same class with :func:`error_from_wire` (the framework's own
``method_not_allowed`` and ``unsupported_media_type`` answers become a plain :class:`Error`).
Codes are stable: they are part of the wire contract and documented in
``docs/reference/errors.md``.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AuthError",
    "BadGatewayError",
    "CallCancelledError",
    "ConflictError",
    "ContainerExitedError",
    "Error",
    "FunctionTimeoutError",
    "HostSupersededError",
    "ImageBuildError",
    "ImageDigestError",
    "ImageNotFoundError",
    "ImagePullError",
    "ImageTooLargeError",
    "ImageUnsupportedError",
    "InsufficientCreditError",
    "InternalError",
    "InvalidGpuError",
    "InvalidRequestError",
    "InvalidResourcesError",
    "MarketRefusedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimitedError",
    "RemoteError",
    "ResourcesUnsatisfiableError",
    "SandboxUnavailableError",
    "SerializationError",
    "ServerUnavailableError",
    "SettingError",
    "StoreUnavailableError",
    "error_from_wire",
]


# An error message on the wire is at most this long: a message that echoes what the client
# sent (a 3 MB model name, a 60,000-character dict name) is cut, not sent back whole.
MAX_WIRE_MESSAGE = 4_000


def bounded(message: str) -> str:
    """``message`` cut to :data:`MAX_WIRE_MESSAGE` characters, saying how much was left out."""
    if len(message) <= MAX_WIRE_MESSAGE:
        return message
    cut = len(message) - MAX_WIRE_MESSAGE
    return f"{message[:MAX_WIRE_MESSAGE]}... ({cut:,} more characters)"


class Error(Exception):
    """Root of every error Crucible raises on purpose."""

    code: ClassVar[str] = "error"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": bounded(self.message)}}


class InvalidRequestError(Error):
    """The request is malformed or names something impossible. Fix the request and retry."""

    code = "invalid_request"
    http_status = 400


class PayloadTooLargeError(InvalidRequestError):
    code = "payload_too_large"
    http_status = 413


class InvalidGpuError(InvalidRequestError):
    code = "invalid_gpu"
    http_status = 400


class InvalidResourcesError(InvalidRequestError):
    code = "invalid_resources"
    http_status = 400


class SerializationError(InvalidRequestError):
    """A value could not be pickled: a call's argument (raised by the SDK before sending),
    or what the function returned, yielded or raised (the call fails with this code). The
    message names the function and the value, and says what to do."""

    code = "serialization_error"
    http_status = 400


class AuthError(Error):
    """No token, or a token the server does not know (or has revoked)."""

    code = "unauthorized"
    http_status = 401


class PermissionDeniedError(Error):
    """The token is valid but its scope does not allow this operation."""

    code = "forbidden"
    http_status = 403


class NotFoundError(Error):
    """The object does not exist, or belongs to another account (never distinguished)."""

    code = "not_found"
    http_status = 404


class ConflictError(Error):
    code = "conflict"
    http_status = 409


class HostSupersededError(ConflictError):
    """A host's sync came from an agent process that is no longer the host's: another agent
    registered under the same name (and account) since. Only the newest agent may sync; the
    older one stops (each agent needs its own ``--name``)."""

    code = "host_superseded"


class QuotaExceededError(Error):
    """A size limit of a dict, queue or other stored object would be passed."""

    code = "quota_exceeded"
    http_status = 413


class RateLimitedError(Error):
    """Too many requests with this token: wait ``retry_after_s`` seconds (the response's
    Retry-After header) and send again. The SDK does so by itself for submits that are safe
    to repeat (every input has an idempotency key)."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InsufficientCreditError(Error):
    """The account has no credit left, or reached its daily spend cap: new calls and leases
    are refused and its running containers are drained until an operator grants credits."""

    code = "insufficient_credit"
    http_status = 402


class MarketRefusedError(Error):
    """No offer on the market matches the function's terms (its ``max_price``, bid, region,
    minimum reliability or reservation), as opposed to capacity being busy right now."""

    code = "market_refused"
    http_status = 422


class ResourcesUnsatisfiableError(Error):
    """No registered host can ever satisfy the function's resource request."""

    code = "resources_unsatisfiable"
    http_status = 422


class FunctionTimeoutError(Error, TimeoutError):
    """The call ran longer than the function's ``timeout``."""

    code = "function_timeout"
    http_status = 408


class CallCancelledError(Error):
    code = "call_cancelled"
    http_status = 409


class ContainerExitedError(Error):
    """The container running the call died (killed, out of memory, host lost) and retries ran
    out."""

    code = "container_exited"
    http_status = 500


class RemoteError(Error):
    """The remote function raised an exception whose type cannot be rebuilt locally.

    ``exc_type`` is the remote type's qualified name and ``remote_traceback`` its traceback.
    """

    code = "remote_error"
    http_status = 500

    def __init__(self, message: str, exc_type: str = "", remote_traceback: str = "") -> None:
        super().__init__(message)
        self.exc_type = exc_type
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        head = f"{self.exc_type}: {self.message}" if self.exc_type else self.message
        if self.remote_traceback:
            return f"{head}\n\nRemote traceback:\n{self.remote_traceback}"
        return head


class ImageBuildError(Error):
    """The agent could not build the function's image; the message holds the installer's
    own words (the end of its output). Fix the package list and run again."""

    code = "image_build_failed"
    http_status = 500


class ImagePullError(Error):
    """The agent could not pull the function's (or pod's) OCI image: the registry is
    unreachable or refused the credentials. Registry credentials never appear in the message."""

    code = "image_pull_failed"
    http_status = 502


class ImageNotFoundError(ImagePullError):
    """The registry has no such repository, tag or digest."""

    code = "image_not_found"
    http_status = 404


class ImageDigestError(ImagePullError):
    """A blob or manifest the registry sent does not hash to its digest (corruption, or
    someone tampering on the way). Nothing of it is used."""

    code = "image_digest_mismatch"
    http_status = 502


class ImageTooLargeError(ImagePullError):
    """The image is larger than this host's limit (CRUCIBLE_OCI_IMAGE_MAX_MIB)."""

    code = "image_too_large"
    http_status = 413


class ImageUnsupportedError(ImagePullError):
    """The image cannot run here: no linux/amd64 (or this host's) variant, an unknown
    manifest or layer type, or (for functions) no Python >= 3.11 inside."""

    code = "image_unsupported"
    http_status = 422


# The codes a container whose image did not pull ends with (the agent reports it, the server
# fails the function's queued calls with it).
IMAGE_ERROR_CODES = frozenset(
    c.code
    for c in (
        ImagePullError,
        ImageNotFoundError,
        ImageDigestError,
        ImageTooLargeError,
        ImageUnsupportedError,
        ImageBuildError,
    )
)


class SandboxUnavailableError(Error):
    """The host cannot run a sandboxed container (bubblewrap missing, user namespaces
    disabled, an unsupported CPU architecture). The message says what to install or enable."""

    code = "sandbox_unavailable"
    http_status = 500


class ServerUnavailableError(Error):
    """The control plane cannot be reached. Is `crucible up` running, and is the URL right?"""

    code = "server_unavailable"
    http_status = 503


class StoreUnavailableError(ServerUnavailableError):
    """The control plane is up but its database is not answering for a moment (restarting,
    failing over, out of connections). Nothing the client did: the SDK, CLI and agent retry
    it within their retry window as they retry a refused connection."""

    code = "store_unavailable"


class BadGatewayError(Error):
    """A web endpoint's app answered what no HTTP response can carry (a status outside
    200..599, a header name or value with CR, LF or NUL): the gateway answers this instead."""

    code = "bad_gateway"
    http_status = 502


class SettingError(Error, ValueError):
    """A setting (its environment variable, e.g. CRUCIBLE_PORT, or CRUCIBLE_DATABASE_URL)
    holds a value this process cannot use: raised when settings are read or the store is
    opened, never sent on the wire. The message names the variable and what it takes."""

    code = "invalid_setting"
    http_status = 500


class InternalError(Error):
    code = "internal"
    http_status = 500


_BY_CODE: dict[str, type[Error]] = {
    cls.code: cls
    for cls in (
        Error,
        InvalidRequestError,
        PayloadTooLargeError,
        InvalidGpuError,
        InvalidResourcesError,
        SerializationError,
        AuthError,
        PermissionDeniedError,
        NotFoundError,
        ConflictError,
        HostSupersededError,
        QuotaExceededError,
        RateLimitedError,
        InsufficientCreditError,
        MarketRefusedError,
        ResourcesUnsatisfiableError,
        FunctionTimeoutError,
        CallCancelledError,
        ContainerExitedError,
        RemoteError,
        ImageBuildError,
        ImagePullError,
        ImageNotFoundError,
        ImageDigestError,
        ImageTooLargeError,
        ImageUnsupportedError,
        SandboxUnavailableError,
        ServerUnavailableError,
        StoreUnavailableError,
        BadGatewayError,
        SettingError,
        InternalError,
    )
}


def is_error_code(code: str) -> bool:
    """Whether ``code`` is one of Crucible's stable error codes."""
    return code in _BY_CODE


def error_from_wire(code: str, message: str) -> Error:
    """The exception for a wire error code; an unknown code becomes a plain :class:`Error`."""
    cls = _BY_CODE.get(code, Error)
    if cls is RemoteError:
        return RemoteError(message)
    err = cls(message)
    return err
