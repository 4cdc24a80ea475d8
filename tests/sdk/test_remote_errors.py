"""A remote exception that cannot be rebuilt here arrives as crucible.RemoteError and says
why, with what to do (it said nothing, and `except MyError` silently caught nothing)."""

from __future__ import annotations

import cloudpickle

import crucible
from crucible.protocol.common import ErrorInfo, Payload
from crucible.sdk._serialization import exception_from_error


class CodedError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)  # `code` is not handed on: unpickling calls CodedError(msg)
        self.code = code


def test_an_exception_whose_init_takes_other_arguments_says_why() -> None:
    info = ErrorInfo(
        code="remote_error",
        message="custom boom",
        exc_type="tests.CodedError",
        exception=Payload.inline(cloudpickle.dumps(CodedError(42, "custom boom"))),
    )
    exc = exception_from_error(info)
    assert isinstance(exc, crucible.RemoteError)
    assert "custom boom" in str(exc) and "super().__init__()" in str(exc), str(exc)


def test_a_rebuildable_exception_is_its_own_type() -> None:
    info = ErrorInfo(
        code="remote_error",
        message="plain",
        exception=Payload.inline(cloudpickle.dumps(ValueError("plain"))),
    )
    assert isinstance(exception_from_error(info), ValueError)
