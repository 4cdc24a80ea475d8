"""The process inside a container: load the user's function, then exchange outputs for inputs
with the control plane until told to stop.

Environment (set by the agent): ``CRUCIBLE_SERVER_URL``, ``CRUCIBLE_CONTAINER_ID``,
``CRUCIBLE_CONTAINER_TOKEN`` (can only exchange this container's inputs and read its
account's blobs), ``CRUCIBLE_ASSIGNMENT`` (the assignment JSON), ``CRUCIBLE_CODE_CACHE``, and
in a sandbox ``CRUCIBLE_SERVER_SOCKET`` (the agent's relay to the control plane).
``CRUCIBLE_INIT_ERROR`` (an :class:`ErrorInfo` as JSON) means the agent could not prepare the
container, e.g. its image failed to build: the worker fails every queued input with it, so the
builder sees the installer's message instead of a call that waits forever. A worker that could
not load its function (that, an import error, an ``@crucible.enter()`` hook that raised) says
so in its exchanges (the container never becomes ready) and exits 1: a crash, which the
scheduler backs off from (a crash loop) instead of starting another container at once.

Timeouts: each input runs under a SIGALRM timer that raises :class:`FunctionTimeoutError`
inside the function; code stuck in C that ignores it is stopped by the server's backstop.
SIGTERM: the worker runs the function's stop hooks (``crucible.on_stop``), finishes the input
in hand, reports, and exits (SIGKILL follows after the grace period). A worker waiting for
work in its exchange's long poll stops waiting at once (it took the whole grace, and was
killed, when its long poll outlasted it).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

from crucible.errors import Error, FunctionTimeoutError, SerializationError
from crucible.protocol import json_payload
from crucible.protocol.calls import ItemsSent
from crucible.protocol.common import LOAD_FAILED, ErrorInfo, Payload
from crucible.protocol.containers import (
    ContainerAssignment,
    ExchangeReply,
    InputAssignment,
    OutputItem,
)
from crucible.protocol.secrets import SecretValues
from crucible.protocol.transport import Transport, server_urls
from crucible.protocol.web import encode_response
from crucible.sdk._app import App
from crucible.sdk._client import Client
from crucible.sdk._cls import exit_hooks, make_instance
from crucible.sdk._hooks import enter_hooks
from crucible.sdk._serialization import (
    deserialize_value,
    error_info_from_exception,
    serialize,
    serialize_value,
)
from crucible.sdk._stop_hooks import drop_stop_hooks_after, run_stop_hooks, stop_hooks_mark
from crucible.sdk._volumes import commit_at_exit, mount_volumes
from crucible.worker.logs import LogShipper
from crucible.worker.web import build_asgi_app, http_parts, ws_parts

__all__ = ["SNAPSHOT_DONE", "Worker", "main", "run_enter_hooks"]

log = logging.getLogger("crucible.worker")

_INLINE_MAX = 2 * 1024 * 1024
# A web response up to this size that is complete before its first part was sent goes back
# with the call's output instead of as items (see Worker._stream).
WEB_HOLD_MAX = 64 * 1024
_WAIT_S = 20.0
# Size batches so one takes about this long: long enough to amortise a round trip, short
# enough that other containers are not starved of inputs.
_TARGET_BATCH_S = 0.02
_MAX_WANT = 1000
_OUTAGE_RETRY_S = 24 * 3600.0


# Set on a module whose snapshot hooks already ran in the zygote this container forked from.
SNAPSHOT_DONE = "__crucible_snapshot_done__"


def run_enter_hooks(module: Any) -> None:
    """Run the module's ``@crucible.enter`` hooks once in this container: all of them, or only
    the plain ones when a zygote already ran the snapshot hooks before forking us."""
    done = bool(getattr(module, SNAPSHOT_DONE, False))
    for hook in enter_hooks(module, snapshot=False if done else None):
        hook()


def forget_other_bundles(cache: Path, mine: Path) -> None:
    """Drop the modules imported from another code bundle than ``mine`` (and its place on
    ``sys.path``): a zygote warms the code it last ran, and a container forked from it for
    another version of that code (a redeploy, `crucible serve`'s reload, the next
    `crucible run`) would otherwise import the old module from ``sys.modules``."""
    root = os.path.abspath(cache) + os.sep
    own = os.path.abspath(mine) + os.sep
    stale = [
        name
        for name, module in list(sys.modules.items())
        if (f := getattr(module, "__file__", None)) is not None
        and str(f).startswith(root)
        and not str(f).startswith(own)
    ]
    for name in stale:
        del sys.modules[name]
    sys.path[:] = [
        p
        for p in sys.path
        if not (os.path.abspath(p) + os.sep).startswith(root) or os.path.abspath(p) + os.sep == own
    ]
    if stale:
        importlib.invalidate_caches()


class _Timeout(BaseException):
    """Raised by the alarm inside user code; a BaseException so `except Exception` in user
    code does not swallow it."""


def _decode_input(raw: bytes) -> tuple[tuple[Any, ...], dict[str, Any], bool]:
    """An input's (args, kwargs), and whether to answer in JSON: a JSON input (the job API)
    is answered in JSON unless it asks for a pickle (a schedule's call, made by the server)."""
    if json_payload.is_json(raw):
        body = json_payload.decode(raw)
        reply_json = body.get("reply", "json") != "pickle"
        return tuple(body.get("args", ())), dict(body.get("kwargs", {})), reply_json
    args, kwargs = deserialize_value(raw, "the call's arguments", "in the container")
    return args, kwargs, False


def _json_result(value: Any, function: str = "the function") -> bytes:
    try:
        return json_payload.encode(value)
    except TypeError:
        raise SerializationError(
            f"{function} returned a {type(value).__name__}, which is not JSON; a call through "
            "the job API must return JSON (dicts, lists, strings, numbers, booleans, None)"
        ) from None


def _alarm(_signum: int, _frame: FrameType | None) -> None:
    raise _Timeout()


class _Unparked(BaseException):
    """Raised by SIGTERM in the main thread while it waits in its exchange's long poll for
    inputs (a BaseException: nothing on the way catches it as an error)."""


class Worker:
    def __init__(self, assignment: ContainerAssignment, transport: Transport, code_cache: Path):
        self.assignment = assignment
        self.transport = transport
        self.code_cache = code_cache
        # Calls received and not yet acknowledged as finished: told to the server with each
        # request for inputs, so a reply lost on the way is noticed (Exchange.held).
        self._in_hand: set[str] = set()
        self._in_hand_lock = threading.Lock()
        self.container_id = assignment.container_id
        self.stopping = False
        # The serving loop is waiting in a long poll for inputs (main thread): SIGTERM ends it.
        self.parked = False
        self.fn: Callable[..., Any] | None = None
        self.init_error: ErrorInfo | None = None
        self.avg_exec_s: float | None = None
        self._local = threading.local()
        self.logs: LogShipper | None = None
        self.exit_hooks: list[Callable[[], Any]] = []  # an @app.cls() instance's
        self.is_generator = False
        # An @app.cls() pool's generator methods: their inputs stream like a generator's.
        self.generator_methods: frozenset[str] = frozenset()
        self.asgi: Any = None  # a web endpoint's ASGI app
        self._web_inputs = 0  # its inputs from the exchange not yet run to their end

    # -- loading ------------------------------------------------------------------------------
    def _bundle_dir(self) -> Path:
        sha = self.assignment.code.bundle
        target = self.code_cache / sha
        if target.exists():
            return target
        self.code_cache.mkdir(parents=True, exist_ok=True)
        status, data = self.transport.request_raw("GET", f"/v1/blobs/{sha}")
        if status != 200:
            Transport._decode(status, data)
        tmp = Path(tempfile.mkdtemp(dir=self.code_cache, prefix=".unpack-"))
        try:
            archive = tmp / "bundle.zip"
            archive.write_bytes(data)
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    if name.startswith("/") or ".." in Path(name).parts:
                        raise Error(f"code bundle holds an unsafe path {name!r}")
                zf.extractall(tmp / "src")
            archive.unlink()
            try:
                os.rename(tmp / "src", target)
            except OSError:
                if not target.exists():  # another worker won the race if it exists
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def load(self) -> None:
        """Import the user's module and find the function. A failure is kept and reported on
        every input this container receives, so the builder sees the import error."""
        failed = os.environ.get("CRUCIBLE_INIT_ERROR")
        if failed:  # the agent could not prepare the container (its image did not build)
            self.init_error = ErrorInfo.model_validate_json(failed)
            return
        try:
            if self.assignment.secrets:
                # Before the user's module is imported: it may read them at import time.
                values = self.transport.request(
                    "GET", f"/v1/containers/{self.container_id}/secrets"
                )
                os.environ.update(SecretValues.model_validate(values).env)
            if self.assignment.volumes:
                mount_volumes(Client.in_container(), self.assignment.volumes)
            src = self._bundle_dir()
            forget_other_bundles(self.code_cache, src)
            sys.path.insert(0, str(src))
            module = importlib.import_module(self.assignment.code.module)
            obj: Any = module
            for part in self.assignment.code.qualname.split("."):
                obj = getattr(obj, part)
            owner = getattr(obj, "app", None)
            if isinstance(owner, App):  # its functions are called with this container's token
                owner._container_app_id = self.assignment.app_id
            raw = getattr(obj, "raw_f", obj)  # a crucible Function wraps the user's function
            if not callable(raw):
                raise Error(f"{self.assignment.code.qualname} is not callable")
            run_enter_hooks(module)
            params = self.assignment.class_params
            if params is not None:  # an @app.cls() pool: one instance, inputs name a method
                cls = getattr(obj, "cls", raw)
                instance = make_instance(cls, params)
                self.exit_hooks = exit_hooks(instance)
                self.generator_methods = frozenset(
                    n for n, v in vars(cls).items() if inspect.isgeneratorfunction(v)
                )

                def call_method(method: str, *args: Any, **kwargs: Any) -> Any:
                    return getattr(instance, method)(*args, **kwargs)

                raw = call_method
            if self.assignment.web is not None:  # a web endpoint: its ASGI app, built once
                self.asgi = build_asgi_app(raw, self.assignment.web)
            self.fn = raw
            self.is_generator = inspect.isgeneratorfunction(raw)
        except BaseException as exc:
            log.exception("could not load the function")
            self.init_error = error_info_from_exception(exc)
            self.init_error.message = f"{LOAD_FAILED}: {exc}"

    # -- running one input --------------------------------------------------------------------
    def _payload_bytes(self, payload: Payload) -> bytes:
        if payload.ref is None:
            return payload.raw()
        status, data = self.transport.request_raw("GET", f"/v1/blobs/{payload.ref}")
        if status != 200:
            Transport._decode(status, data)
        return data

    def _to_payload(self, data: bytes) -> Payload:
        if len(data) <= _INLINE_MAX:
            return Payload.inline(data)
        import hashlib

        sha = hashlib.sha256(data).hexdigest()
        status, body = self.transport.request_raw(
            "PUT", f"/v1/blobs/{sha}", data, content_type="application/octet-stream"
        )
        if status >= 300:
            Transport._decode(status, body)
        return Payload(ref=sha, size=len(data))

    def _invoke(self, args: tuple[Any, ...], kwargs: dict[str, Any], timeout_s: float) -> Any:
        assert self.fn is not None
        if self.assignment.is_async:
            loop = getattr(self._local, "loop", None)
            if loop is None:  # one event loop per thread (several with @concurrent)
                loop = self._local.loop = asyncio.new_event_loop()
            coro = asyncio.wait_for(self.fn(*args, **kwargs), timeout=timeout_s)
            try:
                return loop.run_until_complete(coro)
            except TimeoutError:
                raise _Timeout() from None
        if threading.current_thread() is not threading.main_thread():
            # Concurrent inputs run in threads, where no alarm can reach: the control plane's
            # backstop enforces their timeout.
            return self.fn(*args, **kwargs)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            return self.fn(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _name(self, args: tuple[Any, ...] = ()) -> str:
        """The function's name for messages (``Model.predict`` for a class's input)."""
        name = self.assignment.code.qualname
        if self.assignment.class_params is not None and args and isinstance(args[0], str):
            name = f"{name}.{args[0]}"
        return name

    def _streams(self, args: tuple[Any, ...]) -> bool:
        """Whether the input calls a generator (a generator function, or a class's generator
        method, named by the input's first argument)."""
        if self.assignment.class_params is not None:
            return bool(args) and args[0] in self.generator_methods
        return self.is_generator

    def run_input(self, item: InputAssignment) -> OutputItem:
        if self.init_error is not None:
            return OutputItem(
                call_id=item.call_id, attempt=item.attempt, status="failed", error=self.init_error
            )
        started = time.perf_counter()
        concurrent = self.assignment.max_inputs > 1
        hooks = stop_hooks_mark()
        if self.logs is not None:
            self.logs.call_id = item.call_id
        args: tuple[Any, ...] = ()
        try:
            raw = self._payload_bytes(item.args)
            if self.asgi is not None:  # a request from the gateway: the response streams
                request = json_payload.decode(raw)["args"][0]
                asgi = self.asgi
                if request.get("type") == "websocket":
                    inbox_path = f"/v1/containers/{self.container_id}/calls/{item.call_id}/inbox"

                    def inbox(after: int) -> list[str]:
                        got: list[str] = self.transport.get(
                            f"{inbox_path}?after={after}&wait_s=20", timeout_s=50
                        )
                        return got

                    count = self._stream(
                        item, (), {}, source=lambda: ws_parts(asgi, request, inbox), as_json=True
                    )
                    result = self._to_payload(serialize(count))
                else:
                    held: list[bytes] = []
                    count = self._stream(
                        item,
                        (),
                        {},
                        source=lambda: http_parts(asgi, request),
                        as_json=True,
                        hold=held,
                    )
                    # A response that was whole before anything was sent travels with the
                    # output (one round trip, no items); the gateway reads it from the result.
                    result = self._to_payload(encode_response(held) if held else serialize(count))
            else:
                # A job API call is JSON in, JSON out; the SDK's calls are pickles.
                args, kwargs, is_json = _decode_input(raw)
                if self._streams(args) and not is_json:  # (a job API call gets a clear error)
                    count = self._stream(item, args, kwargs)
                    result = self._to_payload(serialize(count))
                else:
                    value = self._invoke(args, kwargs, item.timeout_s)
                    name = self._name(args)
                    data = (
                        _json_result(value, name)
                        if is_json
                        else serialize_value(value, f"the return value of {name}", "result")
                    )
                    result = self._to_payload(data)
            status, error = "succeeded", None
        except _Timeout:
            status, result = "timed_out", None
            error = ErrorInfo(
                code=FunctionTimeoutError.code,
                message=f"the call ran past its timeout of {item.timeout_s:g} s",
            )
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit) and self.stopping:
                raise
            status, result = "failed", None
            error = error_info_from_exception(exc, self._name(args))
        if self.asgi is not None:
            with self._in_hand_lock:
                self._web_inputs -= 1
        # Hooks the function registered while handling this input were for this input (with
        # several inputs at once there is no telling whose a hook is: they stay).
        if not concurrent:
            drop_stop_hooks_after(hooks)
        if self.logs is not None:
            self.logs.call_id = None
        elapsed = time.perf_counter() - started
        self.avg_exec_s = (
            elapsed if self.avg_exec_s is None else 0.8 * self.avg_exec_s + 0.2 * elapsed
        )
        return OutputItem(
            call_id=item.call_id,
            attempt=item.attempt,
            status=status,
            result=result,
            error=error,
            exec_us=int(elapsed * 1_000_000),
        )

    # -- the loop -----------------------------------------------------------------------------
    def _want(self) -> int:
        if self.stopping:
            return 0
        if self.avg_exec_s is None or self.init_error is not None:
            return 1 if self.init_error is None else _MAX_WANT
        return max(1, min(_MAX_WANT, int(_TARGET_BATCH_S / max(self.avg_exec_s, 1e-6))))

    def serve_batched(self, size: int, wait_ms: int) -> None:
        """``@crucible.batched``: gather up to ``size`` inputs (waiting at most ``wait_ms``
        after the first for more), run them as one call, report one output per input."""
        outputs: list[OutputItem] = []
        while True:
            reply = self.exchange(
                outputs, 0 if self.stopping else size, 0.0 if self.stopping else _WAIT_S
            )
            outputs = []
            batch = list(reply.inputs)
            stop = reply.stop
            deadline = time.monotonic() + wait_ms / 1000
            while batch and len(batch) < size and not (stop or self.stopping):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                more = self.exchange([], size - len(batch), left)
                batch += more.inputs
                stop = stop or more.stop
            if batch:
                outputs = self.run_batch(batch)
            if stop or (not batch and self.stopping):
                if outputs:
                    self.exchange(outputs, 0, 0.0)
                return

    def _stream(
        self,
        item: InputAssignment,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        source: Callable[[], Iterator[Any]] | None = None,
        as_json: bool = False,
        hold: list[bytes] | None = None,
    ) -> int:
        """Run a generator function, sending what it yields in order: at once in batches of
        64, or within 50 ms when it yields less often (a timer thread sends what waits).
        The server holds a send while the caller is too far behind (back-pressure). Returns
        how many items were yielded.

        With ``hold`` (a web request's response), items that are all still unsent when the
        generator ends, and fit in :data:`WEB_HOLD_MAX` bytes together, are not sent: they
        are put in ``hold`` (encoded) for the caller to return with the output, and 0 is
        returned. A slow or large response streams as items as before."""
        assert self.fn is not None
        lock = threading.Lock()
        pending: list[Payload] = []
        raw: list[bytes] = []  # pending's encoded items while nothing was sent (for hold)
        raw_size = 0
        finished = False
        sent = 0
        timer: threading.Timer | None = None
        path = f"/v1/containers/{self.container_id}/items"

        def flush() -> None:
            nonlocal sent, pending
            with lock:
                batch, pending = pending, []
                if not batch:  # the timer sent them already: no empty round trip
                    return
                body = ItemsSent(
                    call_id=item.call_id, attempt=item.attempt, start=sent, items=batch
                )
                ack = self.transport.post(path, body.model_dump(mode="json"))
                sent += len(batch)
                while ack.get("consumed", 0) < 0 or sent - ack.get("consumed", 0) > 256:
                    wait = ItemsSent(
                        call_id=item.call_id, attempt=item.attempt, start=sent, items=[]
                    )
                    ack = self.transport.post(path, wait.model_dump(mode="json"))

        def soon() -> None:
            nonlocal timer
            if timer is None or not timer.is_alive():
                timer = threading.Timer(0.05, flush)
                timer.daemon = True
                timer.start()

        name = self._name(args)
        signal.setitimer(signal.ITIMER_REAL, item.timeout_s)
        try:
            try:
                values = source() if source is not None else self.fn(*args, **kwargs)
                for index, value in enumerate(values):
                    data = (
                        json_payload.encode(value)
                        if as_json
                        else serialize_value(
                            value, f"item {index} yielded by generator {name}", "item"
                        )
                    )
                    payload = self._to_payload(data)
                    with lock:
                        pending.append(payload)
                        full = len(pending) >= 64
                        if hold is not None and sent == 0:
                            raw.append(data.removeprefix(json_payload.MAGIC))
                            raw_size += len(data)
                            full = full or raw_size > WEB_HOLD_MAX
                    # A web response's last body part ends it: nothing waits for a timer.
                    last = (
                        hold is not None and isinstance(value, dict) and value.get("more") is False
                    )
                    # The first items of a response that goes on go at once, later ones in
                    # batches: a generator's first two; a web response's start with its first
                    # three body parts (a model's stream opens with a role-only chunk, then
                    # its first token: neither may wait for the batch timer). A whole small
                    # web response is held for the output instead.
                    prompt = 2 if hold is None else 4
                    if index < prompt and not last and (hold is None or index >= 1):
                        full = True
                    if full:
                        flush()
                    elif not last:
                        soon()
                finished = True
            finally:
                if timer is not None:
                    timer.cancel()
                    if timer.is_alive():
                        timer.join()
                held = (
                    finished
                    and hold is not None
                    and sent == 0
                    and raw_size <= WEB_HOLD_MAX
                    and len(raw) == len(pending)
                )
                if held and hold is not None:
                    hold.extend(raw)
                    pending = []
                flush()  # what was yielded before an error still reaches the caller
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return sent

    def run_batch(self, items: list[InputAssignment]) -> list[OutputItem]:
        """One call of the function with a list per parameter; one output per input."""
        assert self.fn is not None
        started = time.perf_counter()
        json_inputs: list[bool] = []
        try:
            sig = inspect.signature(self.fn)
            columns: dict[str, list[Any]] = {name: [] for name in sig.parameters}
            for item in items:
                args, kwargs, is_json = _decode_input(self._payload_bytes(item.args))
                json_inputs.append(is_json)
                bound = sig.bind(*args, **kwargs)
                bound.apply_defaults()
                for name, value in bound.arguments.items():
                    columns[name].append(value)
            values = self._invoke((), columns, max(i.timeout_s for i in items))
            if not isinstance(values, list | tuple) or len(values) != len(items):
                got = len(values) if isinstance(values, list | tuple) else type(values).__name__
                raise TypeError(
                    f"a @crucible.batched function must return a list with one result per "
                    f"input: {len(items)} inputs, got {got}"
                )
            name = self._name()
            results = [
                self._to_payload(
                    _json_result(v, name)
                    if is_json
                    else serialize_value(v, f"result {i} returned by batched {name}", "result")
                )
                for i, (v, is_json) in enumerate(zip(values, json_inputs, strict=True))
            ]
            outcome: list[tuple[str, Payload | None, ErrorInfo | None]] = [
                ("succeeded", r, None) for r in results
            ]
        except _Timeout:
            err = ErrorInfo(
                code=FunctionTimeoutError.code, message="the batch ran past its timeout"
            )
            outcome = [("timed_out", None, err)] * len(items)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit) and self.stopping:
                raise
            failed = error_info_from_exception(exc, self._name())
            outcome = [("failed", None, failed)] * len(items)
        per_input_us = int((time.perf_counter() - started) * 1_000_000 / len(items))
        return [
            OutputItem(
                call_id=item.call_id,
                attempt=item.attempt,
                status=status,
                result=result,
                error=error,
                exec_us=per_input_us,
            )
            for item, (status, result, error) in zip(items, outcome, strict=True)
        ]

    def serve_concurrent(self, limit: int) -> None:
        """Run up to ``limit`` inputs at once: the main thread asks for as many inputs as
        there are free slots, a pool runs them, a reporter sends each output when it is
        done."""
        reporter = _Reporter(self)
        free = threading.Semaphore(limit)
        in_flight = 0
        lock = threading.Lock()
        done = threading.Condition(lock)

        def run(item: InputAssignment) -> None:
            nonlocal in_flight
            try:
                reporter.put(self.run_input(item))
            finally:
                with lock:
                    in_flight -= 1
                    done.notify_all()
                free.release()

        with ThreadPoolExecutor(max_workers=limit, thread_name_prefix="crucible-input") as pool:
            while not (self.stopping or reporter.stop_asked):
                free.acquire()  # at least one slot
                slots = 1
                while slots < limit and free.acquire(blocking=False):
                    slots += 1
                reply = self.exchange([], slots, _WAIT_S)
                for _ in range(slots - len(reply.inputs)):
                    free.release()
                with lock:
                    in_flight += len(reply.inputs)
                for item in reply.inputs:
                    pool.submit(run, item)
                if reply.stop:
                    break
            with lock:  # finish what is in hand
                while in_flight:
                    done.wait()
        reporter.close()

    def held_calls(self) -> int:
        """A web endpoint's inputs from the exchange that are running or waiting to (safe
        from any thread): its channel takes requests only beside fewer than ``max_inputs``."""
        return self._web_inputs

    def exchange(self, outputs: list[OutputItem], want: int, wait_s: float) -> ExchangeReply:
        """Report ``outputs`` and ask for up to ``want`` inputs. Only one request asking for
        inputs is in flight at a time (the serving loop's), and it says which calls the worker
        holds; the output reporter's requests (``want`` 0) say nothing."""
        body: dict[str, Any] = {
            "outputs": [o.model_dump(mode="json", exclude_none=True) for o in outputs],
            "want": want,
            "wait_s": wait_s,
        }
        if want > 0:
            with self._in_hand_lock:
                body["held"] = sorted(self._in_hand)
        if self.init_error is not None:
            body["init_failed"] = True
        path = f"/v1/containers/{self.container_id}/exchange"
        try:
            self.parked = want > 0 and wait_s > 0 and not self.stopping
            data = self.transport.post(path, body, timeout_s=wait_s + 30)
        except _Unparked:
            # SIGTERM while waiting for work: the request is given up half-way. The server may
            # or may not have its outputs: they go again (it drops an output it recorded
            # already), asking for nothing. An input it handed out on the abandoned answer
            # is requeued when the container ends (as any call of a stopped container).
            self.transport.close_thread()
            body.update(want=0, wait_s=0.0)
            body.pop("held", None)
            data = self.transport.post(path, body, timeout_s=30)
        finally:
            self.parked = False
        reply = ExchangeReply.model_validate(data)
        with self._in_hand_lock:
            self._in_hand.difference_update(o.call_id for o in outputs)
            self._in_hand.update(a.call_id for a in reply.inputs)
            if self.asgi is not None and self.init_error is None:  # see run_input
                self._web_inputs += len(reply.inputs)
        return reply

    def serve(self) -> None:
        if self.assignment.max_batch_size > 1 and self.init_error is None:
            self.serve_batched(self.assignment.max_batch_size, self.assignment.batch_wait_ms)
            return
        if self.assignment.max_inputs > 1 and self.init_error is None:
            self.serve_concurrent(self.assignment.max_inputs)
            return
        if self.init_error is not None:
            # A container that cannot load its function fails one input with why (the caller
            # learns it at once) and exits: the next container, after the crash loop's
            # backoff, may load (a hook that failed once); when none does, the crash loop
            # fails the rest with the same error (scheduler/loop._fail_crash_loops).
            reply = self.exchange([], 1, 0.0)
            failed = [self.run_input(item) for item in reply.inputs]
            if failed:
                self.exchange(failed, 0, 0.0)
            return
        outputs: list[OutputItem] = []
        while True:
            want = self._want()
            wait = 0.0 if self.stopping else _WAIT_S
            reply = self.exchange(outputs, want, wait)
            outputs = []
            for item in reply.inputs:
                outputs.append(self.run_input(item))
            if reply.stop or (not reply.inputs and self.stopping):
                if outputs:
                    self.exchange(outputs, 0, 0.0)
                return


class _Reporter:
    """Sends finished outputs as soon as they finish, from its own thread, while the main
    thread long-polls for new inputs (two requests of one container may be in flight)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._cond = threading.Condition()
        self._pending: list[OutputItem] = []
        self._closed = False
        self.stop_asked = False
        self._thread = threading.Thread(target=self._run, name="crucible-outputs", daemon=True)
        self._thread.start()

    def put(self, output: OutputItem) -> None:
        with self._cond:
            self._pending.append(output)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending and self._closed:
                    return
                batch, self._pending = self._pending, []
            reply = self.worker.exchange(batch, 0, 0.0)
            if reply.stop:
                self.stop_asked = True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()


def _watch_parent() -> None:
    """Exit when the agent that started us is gone (backup for PR_SET_PDEATHSIG)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    try:
        url = os.environ["CRUCIBLE_SERVER_URL"]
        token = os.environ["CRUCIBLE_CONTAINER_TOKEN"]
        assignment_path = Path(os.environ["CRUCIBLE_ASSIGNMENT"])
        cache = Path(os.environ.get("CRUCIBLE_CODE_CACHE", ".crucible-code"))
    except KeyError as exc:
        print(f"crucible worker: missing environment variable {exc}", file=sys.stderr)
        return 2
    assignment = ContainerAssignment.model_validate_json(assignment_path.read_text())
    # A restarting control plane is normal: keep retrying for as long as the agent lives (the
    # worker dies with its agent), so calls in hand are reported once it is back.
    transport = Transport(
        url,
        token,
        user_agent="crucible-worker",
        retry_for_s=_OUTAGE_RETRY_S,
        unix_socket=os.environ.get("CRUCIBLE_SERVER_SOCKET") or None,
    )
    if assignment.pod is not None:
        # A pod's container runs the pod's command, not a function (docs/pods.md).
        from crucible.worker.pod import supervise

        _watch_parent()
        return supervise(assignment, transport)
    worker = Worker(assignment, transport, cache)
    worker.logs = LogShipper(transport, assignment.container_id)
    worker.logs.install()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        if not worker.stopping:
            worker.stopping = True
            run_stop_hooks()  # the function's checkpoint, if it registered one
            if worker.parked and threading.current_thread() is threading.main_thread():
                raise _Unparked  # out of the long poll for work (Worker.exchange)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGALRM, _alarm)
    _watch_parent()
    channel: Any = None
    served = False
    try:
        worker.load()
        if worker.asgi is not None and worker.init_error is None:
            # A web endpoint's requests come on its channel while the exchange brings calls
            # (imported here: other containers need not load ``websockets``).
            from crucible.worker.web_channel import WebChannel, channel_url

            channel = WebChannel(
                worker.asgi,
                channel_url(server_urls(url)[0], assignment.container_id, assignment.max_inputs),
                token,
                unix_socket=os.environ.get("CRUCIBLE_SERVER_SOCKET") or None,
                name=assignment.code.qualname,
                slots=assignment.max_inputs,
                held=worker.held_calls,
            )
            channel.start()
        worker.serve()
        served = worker.init_error is None
    finally:
        if channel is not None:
            channel.close()
        for hook in worker.exit_hooks:
            try:
                hook()
            except Exception:
                log.exception("an @crucible.exit() method raised")
        if served:  # stopped normally: what is left under its volumes is committed
            commit_at_exit()
        worker.logs.close()
    # A container that could not load its function failed what it was given and ends as a
    # crash: the scheduler backs off before the next one (a crash loop), rather than
    # replacing it at once, again and again.
    return 1 if worker.init_error is not None else 0
