"""Functions and call handles: ``.remote()``, ``.map()``, ``.starmap()``, ``.spawn()``,
``.for_each()``, ``.spawn_map()``, ``.remote_gen()``; each blocking one has an async form
(``await f.remote.aio(...)``, sdk/_aio.py)."""

from __future__ import annotations

import contextlib
import inspect
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from crucible.errors import Error, InvalidRequestError
from crucible.protocol.apps import FunctionInfo
from crucible.protocol.calls import CallInfo, CallsCreate, InputItem, ItemsPage
from crucible.protocol.common import Payload
from crucible.protocol.transport import url_part
from crucible.sdk._aio import aio, aio_iter
from crucible.sdk._checks import check_bool, check_int, check_number
from crucible.sdk._client import Client
from crucible.sdk._runtime import is_local
from crucible.sdk._serialization import (
    deserialize_value,
    exception_from_error,
    parameter_names,
    serialize_args,
)

if TYPE_CHECKING:
    from crucible.sdk._app import App

__all__ = ["Function", "FunctionCall", "Retries"]

# What looking up a deployment by name from a function's container tells the builder.
FROM_A_CONTAINER = (
    "a container calls only the functions of its own app, through their handles "
    "(`other.remote(...)`, `Model().method.remote(...)` with `other` and `Model` defined in "
    "the same app). A function of another deployment is called from the builder's side "
    "(return what it needs to the caller), or the work passes through a crucible.Queue"
)

P = ParamSpec("P")
R = TypeVar("R")

# Inputs are sent in batches of at most this many, or this many bytes.
_BATCH_INPUTS = 2000
# How far submission may run ahead of the results the caller has taken: inputs from a
# generator are drawn no faster than that, and a caller that stops reading leaves at most
# this many calls behind (50,000 were made in 10 s after a `break` out of an endless map).
_MAX_AHEAD = 10_000
_BATCH_BYTES = 4 * 1024 * 1024
# An inline payload above this goes to the blob store (the server's default limit).
_INLINE_MAX = 2 * 1024 * 1024
# How long one long poll waits on the server before asking again.
_POLL_S = 25.0
# .remote()'s first wait is shorter: a call still queued by then may be waiting for a reason
# the server can tell (no live host, hosts busy), which get() then prints.
_FIRST_WAIT_S = 5.0
# A map with no result for this long asks the server why its calls wait (and prints it).
_STALL_S = 10.0


@dataclass(frozen=True)
class Retries:
    """Retry policy: ``max_retries`` more attempts after a failure, waiting
    ``initial_delay`` seconds, multiplied by ``backoff_coefficient`` each time, at most
    ``max_delay``."""

    max_retries: int
    initial_delay: float = 1.0
    backoff_coefficient: float = 2.0
    max_delay: float = 60.0

    def __post_init__(self) -> None:
        check_int("Retries.max_retries", self.max_retries, 0, 100)
        check_number("Retries.initial_delay", self.initial_delay, 0, 3600, unit="seconds")
        check_number("Retries.backoff_coefficient", self.backoff_coefficient, 1, 10)
        check_number("Retries.max_delay", self.max_delay, 0, 3600, unit="seconds")

    def to_wire(self) -> dict[str, float]:
        return {
            "max_retries": self.max_retries,
            "initial_delay_s": self.initial_delay,
            "backoff_coefficient": self.backoff_coefficient,
            "max_delay_s": self.max_delay,
        }


def _payload(client: Client, data: bytes) -> Payload:
    if len(data) > _INLINE_MAX:
        return Payload(ref=client.upload_blob(data), size=len(data))
    return Payload.inline(data)


def _result(client: Client, info: CallInfo, name: str | None = None) -> Any:
    """The value of a finished call (of function ``name``, for messages), or raise its
    error."""
    if info.state == "succeeded":
        if info.result is None:
            raise Error(f"call {info.id} succeeded but carries no result")
        what = f"the return value of {name} (call {info.id})" if name else f"{info.id}'s result"
        return deserialize_value(client.payload_bytes(info.result), what, "here")
    if info.error is not None:
        raise exception_from_error(info.error)
    raise Error(f"call {info.id} ended as {info.state}")


class FunctionCall(Generic[R]):
    """A handle on a spawned call: ``get()`` its result, ``cancel()`` it."""

    def __init__(self, client: Client, call_id: str) -> None:
        self._client = client
        self.object_id = call_id

    def __repr__(self) -> str:
        return f"FunctionCall({self.object_id!r})"

    @aio
    def get(self, timeout: float | None = None) -> R:
        """Wait for the result (at most ``timeout`` seconds: then builtin TimeoutError) and
        return it, or raise the call's error."""
        check_number("get() timeout", timeout, 0, 366 * 86400, optional=True, unit="seconds")
        deadline = None if timeout is None else time.monotonic() + timeout
        shown: str | None = None
        # The first look is short, like .remote()'s first wait: a call still queued after it
        # says why on stderr within seconds, not after a whole long poll.
        poll = _FIRST_WAIT_S
        while True:
            wait = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
            poll = _POLL_S
            info = self._client.get_call(self.object_id, wait_s=wait)
            if info.state not in ("queued", "running"):
                return _result(self._client, info)  # type: ignore[no-any-return]
            if info.waiting and info.waiting != shown:
                shown = info.waiting  # said once per reason, never silently forever
                sys.stderr.write(f"crucible: call {self.object_id} is waiting: {shown}\n")
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"call {self.object_id} is still {info.state} after {timeout:g} s; "
                    "call get() again to keep waiting"
                )

    def cancel(self) -> None:
        """Cancel the call. A running call's container is stopped. No effect once finished."""
        self._client.cancel_call(self.object_id)

    @classmethod
    def from_id(cls, call_id: str, client: Client | None = None) -> FunctionCall[Any]:
        """A handle on the call ``call_id`` (``ca-...``, as ``object_id`` and `crucible calls`
        give it), to ``get()`` or ``cancel()`` it from another process."""
        if not isinstance(call_id, str) or not call_id.strip():
            raise InvalidRequestError(
                f"FunctionCall.from_id(): call_id must be a call's id (ca-...), got {call_id!r}"
            )
        return cls(client or Client.from_settings(), call_id)


class Function(Generic[P, R]):
    """A function registered on an :class:`~crucible.App`. Call it in the cloud with
    ``.remote()``, fan out with ``.map()``, or run it here with ``.local()``."""

    def __init__(self, app: App, raw_f: Callable[P, R], options: dict[str, Any]) -> None:
        self.app = app
        self.raw_f = raw_f
        self.options = options
        self.name: str = options["name"]
        self.is_async = inspect.iscoroutinefunction(raw_f)
        self.is_generator = inspect.isgeneratorfunction(raw_f)
        self._function_id: str | None = None
        self._client: Client | None = None
        self._deployment: str | None = None  # set by from_name
        self._through_cls = False  # a class's pool called through its method handles
        self.__doc__ = raw_f.__doc__
        self.__wrapped__ = raw_f

    def __repr__(self) -> str:
        return f"Function({self.app.name}.{self.name})"

    @property
    def kind(self) -> str:
        """What the function is, which decides how to call it: ``"function"``,
        ``"generator"`` (``.remote_gen()``), ``"batched"``, ``"concurrent"``, ``"class"``
        (an ``@app.cls()`` pool) or ``"web_endpoint"`` (called over HTTP)."""
        if self.options.get("web") is not None:
            return "web_endpoint"
        if self.options.get("class_params") is not None:
            return "class"
        if self.is_generator:
            return "generator"
        if self.options.get("max_batch_size", 1) > 1:
            return "batched"
        if self.options.get("max_inputs", 1) > 1:
            return "concurrent"
        return "function"

    @classmethod
    def from_name(
        cls, app_name: str, name: str, *, client: Client | None = None
    ) -> Function[..., Any]:
        """A handle on function ``name`` of the deployment ``app_name`` (``crucible
        deploy``), from any code with a token of the deployment's account. It calls the
        version current now; after a redeploy its calls go to the new version's function
        of the same name. What the function is travels with it (``kind``): a generator
        streams with ``.remote_gen()``, a class is called through
        :meth:`crucible.Cls.from_name`, a web endpoint over HTTP. ``.local()`` is not
        available (the code is not here)."""
        for label, value in (("app_name", app_name), ("name", name)):
            if not isinstance(value, str) or not value.strip():
                raise InvalidRequestError(
                    f"Function.from_name(): {label} must be a non-empty string, got {value!r}"
                )
        client = client or Client.from_settings()
        client.builder_only(f"Function.from_name({app_name!r}, {name!r})", FROM_A_CONTAINER)
        return cls._from_info(app_name, client.lookup_function(app_name, name), client)

    @classmethod
    def _from_info(cls, app_name: str, info: FunctionInfo, client: Client) -> Function[..., Any]:
        """A handle on the function ``info`` of the deployment ``app_name``."""
        from crucible.sdk._app import App

        def unavailable(*_args: Any, **_kwargs: Any) -> Any:
            raise Error(f"{app_name}.{info.name} was looked up by name: its code is not here")

        fn: Function[..., Any] = cls(App(app_name), unavailable, _options_of(info))
        fn.is_async, fn.is_generator = info.is_async, info.is_generator
        fn._deployment = app_name
        fn._hydrate(client, info.id)
        return fn

    def get_raw_f(self) -> Callable[P, R]:
        return self.raw_f

    def get_web_url(self) -> str | None:
        """The public URL of this web endpoint (``@crucible.fastapi_endpoint`` or
        ``@crucible.asgi_app``) in the deployment it was looked up in
        (:meth:`from_name`): its own host when the exchange serves user content on a
        domain of its own (``CRUCIBLE_PORTS_DOMAIN``), else its ``/web/...`` path on the
        exchange. None for a function that is not a web endpoint. Asked again, it reads the
        deployment's current version (a redeploy may have made it a web endpoint or not)."""
        if self._deployment is None:
            if self.kind != "web_endpoint":
                return None
            raise Error(
                f"{self.name}.get_web_url(): web endpoints are served for deployed apps: "
                f"deploy it (`crucible deploy`, or app.deploy()) and look it up with "
                f"crucible.Function.from_name({self.app.name!r}, {self.name!r})"
            )
        client = self._client or Client.from_settings()
        info = client.lookup_function(self._deployment, self.name)
        if info.web is None:
            return None
        return info.web_url or None

    def _known_web_url(self) -> str | None:
        """The endpoint's URL when the exchange can say (a deployed one), for a message."""
        if self._deployment is None:
            return None
        try:
            return self.get_web_url()
        except Exception:  # only for a message: it falls back to the URL's pattern
            return None

    def _serialize_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        """The call's pickled arguments; one that cannot be pickled is named in the error."""
        if self.options.get("class_params") is not None and args:
            # An @app.cls() pool: the first argument names the method to call.
            method = getattr(self.raw_f, str(args[0]), None)
            names = ["method", *parameter_names(method, skip=1)]
            return serialize_args(f"{self.name}.{args[0]}", names, args, kwargs)
        return serialize_args(self.name, parameter_names(self.raw_f), args, kwargs)

    # -- binding -----------------------------------------------------------------------------
    def _hydrate(self, client: Client | None, function_id: str | None) -> None:
        self._client, self._function_id = client, function_id

    def _bound(self, how: str = "remote") -> tuple[Client, str]:
        if self._client is None or self._function_id is None:
            if not is_local():  # a function of this app calling another: found by name
                client, app_id = self.app._in_container(f"{self.name}.{how}()")
                self._hydrate(client, client.app_function(app_id, self.name).id)
                assert self._client is not None and self._function_id is not None
                return self._client, self._function_id
            raise Error(
                f"{self.name}.{how}() needs a running app: call it inside `with app.run():` "
                "or from a @app.local_entrypoint() run by `crucible run`"
            )
        return self._client, self._function_id

    # -- calling -----------------------------------------------------------------------------
    def local(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function in this process."""
        if self.is_async:
            import asyncio

            return asyncio.run(self.raw_f(*args, **kwargs))  # type: ignore[arg-type]
        return self.raw_f(*args, **kwargs)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.local(*args, **kwargs)

    @aio
    def remote(self, /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one call in a container and return its result (or raise its error)."""
        self._not_generator("remote")
        client, fid = self._bound("remote")
        payload = _payload(client, self._serialize_args(args, kwargs))
        created = client.create_calls(
            fid,
            CallsCreate(
                inputs=[InputItem(args=payload, idempotency_key=uuid.uuid4().hex)],
                wait_s=_FIRST_WAIT_S,
            ),
        )
        if created.result is not None:
            return _result(client, created.result, self.name)  # type: ignore[no-any-return]
        return FunctionCall[R](client, created.call_ids[0]).get()

    @aio
    def spawn(self, /, *args: P.args, **kwargs: P.kwargs) -> FunctionCall[R]:
        """Queue one call and return a handle at once."""
        self._not_generator("spawn")
        client, fid = self._bound("spawn")
        payload = _payload(client, self._serialize_args(args, kwargs))
        created = client.create_calls(
            fid, CallsCreate(inputs=[InputItem(args=payload, idempotency_key=uuid.uuid4().hex)])
        )
        return FunctionCall(client, created.call_ids[0])

    @aio_iter
    def map(
        self,
        *iterables: Iterable[Any],
        kwargs: dict[str, Any] | None = None,
        return_exceptions: bool = False,
        order_outputs: bool = True,
    ) -> Iterator[R]:
        """Call the function once per element (zipped across ``iterables``); yields results
        in input order, or as they finish with ``order_outputs=False``. With
        ``return_exceptions=True`` a failed input yields its exception instead of raising
        it."""
        if not iterables:
            raise InvalidRequestError(f"{self.name}.map() needs at least one iterable")
        _check_map_options(self.name, "map", kwargs, return_exceptions, order_outputs)
        return self._map(
            zip(*iterables, strict=False), kwargs or {}, return_exceptions, order_outputs, "map"
        )

    @aio_iter
    def starmap(
        self,
        iterable: Iterable[Iterable[Any]],
        kwargs: dict[str, Any] | None = None,
        return_exceptions: bool = False,
        order_outputs: bool = True,
    ) -> Iterator[R]:
        """Like ``map`` but each element is an argument tuple: ``f.starmap([(1, 2), (3, 4)])``."""
        _check_map_options(self.name, "starmap", kwargs, return_exceptions, order_outputs)
        return self._map(
            (tuple(a) for a in iterable), kwargs or {}, return_exceptions, order_outputs, "starmap"
        )

    @aio
    def for_each(
        self,
        *iterables: Iterable[Any],
        kwargs: dict[str, Any] | None = None,
        ignore_exceptions: bool = False,
    ) -> None:
        """Call the function once per element, like ``map``, and wait for every call to end,
        discarding the results. The first failure is raised, unless ``ignore_exceptions``."""
        if not iterables:
            raise InvalidRequestError(f"{self.name}.for_each() needs at least one iterable")
        _check_map_options(self.name, "for_each", kwargs, ignore_exceptions, False)
        args = zip(*iterables, strict=False)
        for _ in self._map(args, kwargs or {}, ignore_exceptions, False, "for_each"):
            pass

    @aio
    def spawn_map(
        self, *iterables: Iterable[Any], kwargs: dict[str, Any] | None = None
    ) -> list[FunctionCall[R]]:
        """Queue one call per element (zipped across ``iterables``) and return at once, with a
        handle on each call, in input order (``.get()`` one, or ``crucible calls``)."""
        if not iterables:
            raise InvalidRequestError(f"{self.name}.spawn_map() needs at least one iterable")
        _check_map_options(self.name, "spawn_map", kwargs, False, True)
        self._not_generator("spawn_map")
        client, fid = self._bound("spawn_map")
        calls: list[FunctionCall[R]] = []
        batch: list[InputItem] = []
        size = 0
        for args in zip(*iterables, strict=False):
            payload = _payload(client, self._serialize_args(tuple(args), kwargs or {}))
            batch.append(InputItem(args=payload, idempotency_key=uuid.uuid4().hex))
            size += len(payload.data or "")
            if len(batch) >= _BATCH_INPUTS or size >= _BATCH_BYTES:
                calls += self._spawn_batch(client, fid, batch)
                batch, size = [], 0
        if batch:
            calls += self._spawn_batch(client, fid, batch)
        return calls

    def _spawn_batch(
        self, client: Client, fid: str, batch: list[InputItem]
    ) -> list[FunctionCall[R]]:
        created = client.create_calls(fid, CallsCreate(inputs=batch))
        return [FunctionCall[R](client, cid) for cid in created.call_ids]

    def _map(
        self,
        arg_tuples: Iterator[tuple[Any, ...]],
        kwargs: dict[str, Any],
        return_exceptions: bool,
        ordered: bool = True,
        how: str = "map",
    ) -> Iterator[R]:
        self._not_generator(how)
        client, fid = self._bound(how)
        run = _MapRun(client, fid, self, arg_tuples, kwargs, return_exceptions, ordered)
        return run.results()

    def _not_generator(self, how: str) -> None:
        self._callable_as(how)
        if self.is_generator:
            raise InvalidRequestError(
                f"{self.name} is a generator: iterate over {self.name}.remote_gen(...) "
                f"instead of .{how}()"
            )

    def _callable_as(self, how: str) -> None:
        """Refuse calls that cannot work for what the function is, saying what does."""
        kind = self.kind
        if kind == "web_endpoint":
            where = self._deployment or self.app.name
            url = self._known_web_url()
            at = (
                url
                if url
                else f"{{server}}/web/{{account}}/{where}/{self.name}/, or its own host where "
                "the exchange serves user content on a domain of its own (`crucible deploy` "
                "prints the URL)"
            )
            raise InvalidRequestError(
                f"{self.name} is a web endpoint: call it over HTTP at {at}, not with .{how}()"
            )
        if kind == "class" and self._deployment is not None and not self._through_cls:
            raise InvalidRequestError(
                f"{self.name} is an @app.cls() class: call its methods with "
                f"crucible.Cls.from_name({self._deployment!r}, {self.name.split('.')[0]!r})"
                f"().<method>.{how}(...)"
            )

    @aio_iter
    def remote_gen(self, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[Any]:
        """Run a generator function in a container and iterate over what it yields, as it
        yields it. The container pauses when it gets far ahead of this loop (back-pressure);
        an error raised inside the function is raised here after the items before it.
        Leaving the loop early (``break``, ``close()``, the iterator collected) cancels the
        call: the function stops and is not billed further."""
        self._callable_as("remote_gen")
        if not self.is_generator:
            raise InvalidRequestError(
                f"{self.name} is not a generator (it is a {self.kind.replace('_', ' ')}): "
                "call it with .remote(), .spawn() or .map()"
            )
        yield from self._stream(*args, **kwargs)

    def _stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """One call whose items are read as they are yielded (what :meth:`remote_gen`
        returns; an ``@app.cls()`` pool's generator method is called through it too)."""
        client, fid = self._bound("remote_gen")
        payload = _payload(client, self._serialize_args(args, kwargs))
        created = client.create_calls(
            fid, CallsCreate(inputs=[InputItem(args=payload, idempotency_key=uuid.uuid4().hex)])
        )
        call_id = created.call_ids[0]
        after = 0
        done = False
        try:
            while True:
                page = ItemsPage.model_validate(
                    client.get(
                        f"/v1/calls/{url_part(call_id)}/items?after={after}&wait_s={_POLL_S}"
                    )
                )
                for item in page.items:
                    what = f"item {after} yielded by {self.name} (call {call_id})"
                    yield deserialize_value(client.payload_bytes(item), what, "here")
                    after += 1
                after = page.next
                if page.done:
                    done = True
                    if page.call.state != "succeeded":
                        _result(client, page.call)  # raises the call's error
                    return
        finally:
            if not done:  # the caller left the loop early (or it failed): stop the function
                # Best effort, and possibly from the garbage collector: nothing may escape.
                with contextlib.suppress(Exception):
                    client.cancel_call(call_id)


def _check_map_options(
    name: str,
    how: str,
    kwargs: dict[str, Any] | None,
    return_exceptions: bool,
    order_outputs: bool = True,
) -> None:
    if kwargs is not None and not (
        isinstance(kwargs, dict) and all(isinstance(k, str) for k in kwargs)
    ):
        raise InvalidRequestError(
            f"{name}.{how}() kwargs must be a dict of keyword arguments for every call, "
            f"got {type(kwargs).__name__}"
        )
    flag = "ignore_exceptions" if how == "for_each" else "return_exceptions"
    check_bool(f"{name}.{how}() {flag}", return_exceptions)
    check_bool(f"{name}.{how}() order_outputs", order_outputs)


def _options_of(info: FunctionInfo) -> dict[str, Any]:
    """The options of a function looked up on the exchange (what the decorator had set)."""
    return {
        "name": info.name,
        "resources": info.resources,
        "timeout_s": info.timeout_s,
        "retries": info.retries,
        "max_containers": info.max_containers,
        "scaledown_window_s": info.scaledown_window_s,
        "min_containers": info.min_containers,
        "buffer_containers": info.buffer_containers,
        "market": info.market,
        "network": info.network,
        "max_inputs": info.max_inputs,
        "target_inputs": info.target_inputs,
        "max_batch_size": info.max_batch_size,
        "batch_wait_ms": info.batch_wait_ms,
        "web": info.web,
        "class_params": info.class_params,
        "class_spec": info.class_spec,
    }


class _MapRun:
    """One ``.map``: a thread submits inputs in batches while the caller's thread long-polls
    the group's results and yields them in input order."""

    def __init__(
        self,
        client: Client,
        function_id: str,
        function: Function[Any, Any],
        arg_tuples: Iterator[tuple[Any, ...]],
        kwargs: dict[str, Any],
        return_exceptions: bool,
        ordered: bool = True,
    ) -> None:
        self.client = client
        self.ordered = ordered
        self.function_id = function_id
        self.function = function
        self.name = function.name
        self.args = arg_tuples
        self.kwargs = kwargs
        self.return_exceptions = return_exceptions
        self.group_id = uuid.uuid4().hex
        self.submitted = 0
        self.taken = 0  # results the caller has taken (submission stays _MAX_AHEAD ahead)
        self.abandoned = threading.Event()  # the caller left before the last result
        self.done_submitting = threading.Event()
        self.submit_error: BaseException | None = None
        self.last_batch_call: str | None = None  # a call to ask why the map waits

    def _submit(self) -> None:
        try:
            batch: list[InputItem] = []
            size = 0
            start = 0
            for args in self.args:
                while start + len(batch) - self.taken >= _MAX_AHEAD:
                    if batch:  # what is drawn goes out before waiting
                        self._send(batch, start)
                        start += len(batch)
                        batch, size = [], 0
                    if self.abandoned.wait(0.05):
                        return
                if self.abandoned.is_set():
                    return
                payload = _payload(self.client, self.function._serialize_args(args, self.kwargs))
                batch.append(InputItem(args=payload))
                size += len(payload.data or "")
                if len(batch) >= _BATCH_INPUTS or size >= _BATCH_BYTES:
                    self._send(batch, start)
                    start += len(batch)
                    batch, size = [], 0
            if batch:
                self._send(batch, start)
        except BaseException as exc:
            self.submit_error = exc
        finally:
            self.client.transport.close_thread()
            self.done_submitting.set()

    def _send(self, batch: list[InputItem], start: int) -> None:
        # The batch's first input carries a key: if the transport retries a request whose
        # reply was lost, the server returns the calls it already made for this batch.
        batch[0] = InputItem(args=batch[0].args, idempotency_key=f"{self.group_id}-{start}")
        created = self.client.create_calls(
            self.function_id, CallsCreate(inputs=batch, group_id=self.group_id, start_index=start)
        )
        if created.call_ids:
            self.last_batch_call = created.call_ids[0]
        self.submitted = start + len(batch)

    def results(self) -> Iterator[Any]:
        submitter = threading.Thread(target=self._submit, name="crucible-map-submit", daemon=True)
        submitter.start()
        ready: dict[int, CallInfo] = {}
        next_index = 0
        last_result = time.monotonic()
        shown: str | None = None
        finished = False
        try:
            yield from self._results(ready, next_index, last_result, shown)
            finished = True
        finally:
            if not finished:  # the caller left (break, an error): draw and submit no more
                self.abandoned.set()
        submitter.join()

    def _results(
        self, ready: dict[int, CallInfo], next_index: int, last_result: float, shown: str | None
    ) -> Iterator[Any]:
        yielded: set[int] = set()
        with _progress(self.name) as progress:
            while True:
                done = self.done_submitting.is_set()
                if self.submit_error is not None:
                    raise self.submit_error
                if done and next_index >= self.submitted:
                    break
                got = self.client.group_results(self.group_id, wait_s=1.0 if not done else 5.0)
                for info in got.results:
                    ready[info.index] = info
                if got.results:
                    last_result = time.monotonic()
                elif time.monotonic() - last_result >= _STALL_S and self.last_batch_call:
                    # Nothing for a while: say why the map's calls wait, once per reason.
                    last_result = time.monotonic()
                    why = self.client.get_call(self.last_batch_call).waiting
                    if why and why != shown:
                        shown = why
                        progress.note(f"crucible: {self.name}.map is waiting: {why}")
                if not got.results and got.outstanding == 0 and done:
                    first = next_index if self.ordered else 0
                    missing = [
                        i
                        for i in range(first, self.submitted)
                        if i not in ready and i not in yielded
                    ]
                    if missing:  # a reply carrying them was lost: read them again
                        again = self.client.group_results(
                            self.group_id, wait_s=0, indices=missing[:50_000]
                        )
                        for info in again.results:
                            ready[info.index] = info
                # In input order, or (order_outputs=False) as they came: next_index then
                # counts the results yielded, and ``yielded`` holds their indices.
                while ready and (not self.ordered or next_index in ready):
                    index = next_index if self.ordered else next(iter(ready))
                    info = ready.pop(index)
                    if not self.ordered:
                        yielded.add(index)
                    next_index += 1
                    self.taken = next_index
                    progress(next_index, self.submitted if done else None)
                    try:
                        value = _result(self.client, info, self.name)
                    except Exception as exc:
                        if not self.return_exceptions:
                            raise
                        value = exc
                    yield value


class _progress:
    """A progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> _progress:
        if sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(
                TextColumn(f"[bold]{self.name}.map"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.name, total=None)
        return self

    def __call__(self, completed: int, total: int | None) -> None:
        self.update(completed, total)

    def note(self, text: str) -> None:
        """A line on stderr (above the bar when there is one)."""
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            sys.stderr.write(text + "\n")

    def update(self, completed: int, total: int | None) -> None:
        if self._bar is not None and (completed % 100 == 0 or completed == total):
            self._bar.update(self._task, completed=completed, total=total)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
