"""The async forms of the SDK's blocking calls, as Modal spells them: ``await f.remote.aio(x)``,
``await f.spawn.aio(x)``, ``await call.get.aio()``, ``async for r in f.map.aio(xs)``.

A method decorated with :func:`aio` (or :func:`aio_iter` for one that returns an iterator)
is called as before; its ``.aio`` runs the same code in a worker thread, so an event loop
(an async local entrypoint, a FastAPI endpoint) keeps serving while the call waits. The
work itself is the same HTTP exchange with the server: nothing is duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, cast, overload

__all__ = ["aio", "aio_iter"]

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S")

_END = object()


class _Bound(Generic[P, T]):
    """A method bound to its object, with its async form as ``.aio``."""

    def __init__(self, call: Callable[P, T], iterates: bool) -> None:
        self._call = call
        self._iterates = iterates
        functools.update_wrapper(self, call)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._call(*args, **kwargs)

    def aio(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        if self._iterates:
            return _iterate(lambda: cast("Iterator[Any]", self._call(*args, **kwargs)))
        return asyncio.to_thread(self._call, *args, **kwargs)


class _Method(Generic[S, P, T]):
    """A method whose bound form has ``.aio`` (see :func:`aio`)."""

    def __init__(self, f: Callable[Concatenate[S, P], T], iterates: bool) -> None:
        self._f = f
        self._iterates = iterates
        self.__doc__ = f.__doc__
        self.__name__ = getattr(f, "__name__", "method")
        self.__wrapped__ = f

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> _Method[S, P, T]: ...
    @overload
    def __get__(self, obj: S, objtype: type | None = None) -> _Bound[P, T]: ...
    def __get__(self, obj: S | None, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return _Bound(functools.partial(self._f, obj), self._iterates)


def aio(f: Callable[Concatenate[S, P], T]) -> _Method[S, P, T]:
    """Give a blocking method an async form: ``obj.method.aio(...)`` is awaitable."""
    return _Method(f, iterates=False)


def aio_iter(f: Callable[Concatenate[S, P], T]) -> _Method[S, P, T]:
    """Give a method that returns an iterator an async form: ``async for x in
    obj.method.aio(...)`` (the iterator is advanced in a worker thread)."""
    return _Method(f, iterates=True)


async def _iterate(make: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
    """Drive a blocking iterator in one worker thread and yield what it yields. Leaving the
    ``async for`` early closes the iterator (a map stops submitting, a generator call is
    cancelled), in its own thread."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
    stop = threading.Event()

    def put(item: Any) -> bool:
        """Hand ``item`` to the loop; False once the caller has left (or its loop closed)."""
        try:
            fut = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        except RuntimeError:  # the event loop is closed
            return False
        while not stop.is_set():
            try:
                fut.result(timeout=0.5)
                return True
            except TimeoutError:
                continue
        fut.cancel()
        return False

    def drive() -> None:
        it: Iterator[Any] | None = None
        try:
            it = make()
            for item in it:
                if stop.is_set() or not put((True, item)):
                    break
            else:
                put(_END)
        except BaseException as exc:  # raised at the `async for`, in the caller's task
            put((False, exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    # The thread finishes on its own once the caller has left: at its next item, which a
    # long poll may hold for some seconds; the caller does not wait for that.
    thread = asyncio.ensure_future(asyncio.to_thread(drive))
    _running.add(thread)
    thread.add_done_callback(_running.discard)
    try:
        while True:
            got = await queue.get()
            if got is _END:
                break
            ok, value = got
            if not ok:
                raise value
            yield value
    finally:
        stop.set()
        while not queue.empty():  # unblock a put() waiting for room
            queue.get_nowait()


# The threads' tasks, kept referenced until they are done (the loop holds only weak ones).
_running: set[asyncio.Future[None]] = set()
