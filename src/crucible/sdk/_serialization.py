"""Arguments, results and exceptions as bytes (cloudpickle), on the SDK and worker side only.

The control plane never unpickles: it stores these bytes and forwards them.
"""

from __future__ import annotations

import inspect
import io
import os
import pickle
import sys
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any

import cloudpickle

from crucible.errors import RemoteError, SerializationError, error_from_wire
from crucible.protocol.common import ErrorInfo, Payload

__all__ = [
    "STORED_ADVICE",
    "deserialize",
    "deserialize_value",
    "error_info_from_exception",
    "exception_from_error",
    "parameter_names",
    "serialize",
    "serialize_args",
    "serialize_value",
]

_ARG_ADVICE = (
    "pass plain data (numbers, strings, lists, dicts, dataclasses, arrays) and create locks, "
    "connections, clients and open files inside the function instead"
)
STORED_ADVICE = (
    "store plain data (numbers, strings, lists, dicts, dataclasses, arrays); locks, "
    "connections, clients and open files cannot be shared between processes"
)
_RESULT_ADVICE = (
    "return plain data (numbers, strings, lists, dicts, dataclasses, arrays); locks, "
    "connections, clients, open files and generators must stay inside the container"
)


def serialize(obj: Any) -> bytes:
    return cloudpickle.dumps(obj, protocol=5)  # type: ignore[no-any-return]


def _pickle_error(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def _culprit(value: Any, path: str, depth: int = 0) -> tuple[str, Any]:
    """Where inside ``value`` the first part that cannot be pickled is, and that part
    (``path`` and ``value`` themselves when no smaller part is to blame), looking into dicts,
    lists, tuples, sets and attributes."""
    if depth >= 4:
        return path, value
    children: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        children = [(f"{path}[{k!r}]", v) for k, v in list(value.items())[:1000]]
    elif isinstance(value, list | tuple | set | frozenset):
        children = [(f"{path}[{i}]", v) for i, v in enumerate(list(value)[:1000])]
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        children = [(f"{path}.{k}", v) for k, v in list(vars(value).items())[:1000]]
    for child_path, child in children:
        try:
            serialize(child)
        except Exception:
            return _culprit(child, child_path, depth + 1)
    return path, value


def serialize_value(
    value: Any, what: str, name: str = "value", advice: str = _RESULT_ADVICE
) -> bytes:
    """Pickle ``value``, or raise :class:`SerializationError` saying that it was ``what``
    (e.g. "the return value of function f"), which part could not be pickled, and why."""
    try:
        return serialize(value)
    except MemoryError:
        # Not the value's type: a copy of it did not fit (in a container, its memory=).
        raise SerializationError(
            f"{what} cannot be pickled: a {type(value).__name__}: out of memory while copying "
            "it; give the function more memory= (a result needs room for a copy of itself), "
            "or return less"
        ) from None
    except Exception as exc:
        where, part = _culprit(value, name)
        inside = "" if where == name else f" (at {where}, a {type(part).__name__})"
        raise SerializationError(
            f"{what} cannot be pickled: a {type(value).__name__}{inside}: "
            f"{_pickle_error(exc)}; {advice}"
        ) from None


def parameter_names(f: Callable[..., Any] | None, *, skip: int = 0) -> list[str]:
    """The names of ``f``'s parameters (after the first ``skip``), or [] when unknown."""
    if f is None:
        return []
    try:
        return list(inspect.signature(f).parameters)[skip:]
    except (TypeError, ValueError):
        return []


def serialize_args(
    function: str, names: list[str], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> bytes:
    """A call's ``(args, kwargs)`` pickled; an argument that cannot be pickled raises
    :class:`SerializationError` naming the argument (by parameter name: ``names`` are the
    names of the positional ones, when known) and the function."""
    try:
        return serialize((args, kwargs))
    except Exception as exc:
        first_error = exc
    labelled = [
        (names[i] if i < len(names) else f"args[{i}]", a) for i, a in enumerate(args)
    ] + list(kwargs.items())
    for label, value in labelled:
        try:
            serialize(value)
        except Exception:
            serialize_value(value, f"argument {label!r} of {function}", label, _ARG_ADVICE)
    raise SerializationError(
        f"the arguments of {function} cannot be pickled: {_pickle_error(first_error)}; "
        f"{_ARG_ADVICE}"
    )


# The names a script run as ``python app.py`` ships under (its file's module name): its
# containers import it by that name, so the classes of a result or an exception come back
# named ``app.X``. Unpickled here they are the script's own ``__main__`` classes, not a
# second copy of the module (``except AppError`` did not catch, ``isinstance`` was False).
_MAIN_NAMES: set[str] = set()


def note_main_module(name: str) -> None:
    """``__main__`` ships as module ``name`` (see :data:`_MAIN_NAMES`)."""
    _MAIN_NAMES.add(name)


class _MainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        main = sys.modules.get("__main__")
        if module in _MAIN_NAMES and main is not None:
            found: Any = main
            try:
                for part in name.split("."):
                    found = getattr(found, part)
            except AttributeError:
                pass  # not the script's own: imported as the module it names
            else:
                return found
        return super().find_class(module, name)


def deserialize(data: bytes) -> Any:
    if not _MAIN_NAMES:
        return cloudpickle.loads(data)
    return _MainUnpickler(io.BytesIO(data)).load()


def deserialize_value(data: bytes, what: str, where: str) -> Any:
    """Unpickle ``what`` (e.g. "the return value of f"), or raise
    :class:`SerializationError` saying it cannot be rebuilt ``where`` ("here", "in the
    container") and why: usually a class whose module is not importable on that side."""
    try:
        return deserialize(data)
    except Exception as exc:
        raise SerializationError(
            f"{what} cannot be unpickled {where}: {type(exc).__name__}: {_pickle_error(exc)}; "
            f"the modules its classes come from must be importable {where} (ship local code "
            "with Image.add_local_python_source, install packages in the image), or use plain "
            "data"
        ) from None


# Where Crucible's own modules live: their frames above the builder's code (the worker's
# call machinery) say nothing to the builder.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _from_user_code(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` from the first frame outside Crucible's package; all of it when every frame
    is Crucible's (the failure is the worker's own, and its frames are the story)."""
    first = tb
    while first is not None and first.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        first = first.tb_next
    return first if first is not None else tb


def error_info_from_exception(exc: BaseException, function: str | None = None) -> ErrorInfo:
    """What the worker sends when the user's function raised (``function``: its name, for
    the message when the exception itself cannot be pickled). A :class:`SerializationError`
    (a result or item that cannot be pickled) keeps its own code."""
    if isinstance(exc, SerializationError):
        return ErrorInfo(code=exc.code, message=exc.message[:10_000])
    tb = "".join(traceback.format_exception(type(exc), exc, _from_user_code(exc.__traceback__)))
    exc_type = f"{type(exc).__module__}.{type(exc).__qualname__}"
    pickled: Payload | None = None
    if isinstance(exc, SystemExit):
        message = f"the function called sys.exit({exc.code!r})"
    else:  # MemoryError() and KeyboardInterrupt() say nothing: their type does
        message = str(exc)[:10_000] or type(exc).__name__
    try:
        data = serialize(exc)
        if len(data) < 1024 * 1024:
            pickled = Payload.inline(data)
    except Exception as pickling:
        # The exception still reaches the caller, by name and traceback, as RemoteError.
        pickled = None
        by = f"raised by {function}" if function else "raised by the function"
        message = (
            f"{message} [the {type(exc).__name__} {by} cannot be pickled "
            f"({_pickle_error(pickling)}), so it arrives as crucible.RemoteError; keep an "
            "exception's attributes picklable to get its own type back]"
        )
    return ErrorInfo(
        code=RemoteError.code,
        message=message,
        exc_type=exc_type,
        traceback=tb[-50_000:],
        exception=pickled,
    )


def exception_from_error(info: ErrorInfo) -> BaseException:
    """The exception to raise for a failed call: the remote exception's own type when it can
    be rebuilt here (with the remote traceback as a note), else a crucible error."""
    if info.code != RemoteError.code:
        return error_from_wire(info.code, info.message)
    message = info.message
    if info.exception is not None and info.exception.data is not None:
        try:
            exc = deserialize(info.exception.raw())
            # SystemExit, KeyboardInterrupt and the like are the container's own affair:
            # raised here they would end the caller's process without a word (a `sys.exit(2)`
            # in the function exited `crucible run` with status 2, printing nothing).
            if isinstance(exc, Exception):
                if info.traceback:
                    exc.add_note(f"\nRemote traceback:\n{info.traceback}")
                return exc
        except Exception as failed:
            # Say why it is not its own type (an __init__ that takes other arguments than
            # the ones it hands to Exception, most often): `except MyError` catches nothing.
            advice = (
                "its class is not importable in this process"
                if isinstance(failed, ImportError | AttributeError)
                else "an exception whose __init__ takes other arguments must pass them all to "
                "super().__init__(), or define __reduce__"
            )
            message += (
                " (it arrives as crucible.RemoteError: the exception could not be rebuilt "
                f"here, {type(failed).__name__}: {str(failed)[:200]}; {advice})"
            )
    return RemoteError(message, exc_type=info.exc_type or "", remote_traceback=info.traceback or "")
