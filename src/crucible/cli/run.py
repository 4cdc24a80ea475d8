"""`crucible run FILE[::ENTRYPOINT] [-- ARGS]`: run an app's local entrypoint with the app
live on the exchange."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import inspect
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from crucible.cli._embedded import ensure_running
from crucible.cli._output import clean
from crucible.errors import Error, InvalidRequestError
from crucible.protocol.logs import LogPage
from crucible.sdk._app import App, LocalEntrypoint
from crucible.sdk._client import Client
from crucible.sdk._cls import Cls
from crucible.sdk._functions import Function
from crucible.sdk._packaging import _package_root
from crucible.settings import load_settings

__all__ = ["call_entrypoint", "import_app_file", "register"]


def import_app_file(path: Path) -> Any:
    """Import a file as the module name it has on its package root (not ``__main__``), so
    containers import the very same name."""
    if not path.exists():
        raise InvalidRequestError(f"{path} does not exist")
    if path.suffix != ".py":
        raise InvalidRequestError(f"{path} is not a Python file")
    file = path.resolve()
    root, parts = _package_root(file)
    name = ".".join([*parts, file.stem])
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise InvalidRequestError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Error, KeyboardInterrupt):
        raise  # Crucible's own errors (a misused decorator) say what to do already
    except SystemExit as exc:
        sys.modules.pop(name, None)
        # A script's own sys.exit() ran at import: the command would end silently (with
        # status 0 for sys.exit(0)) having done nothing.
        raise InvalidRequestError(
            f"{path} called sys.exit({exc.code!r}) while it was imported, so nothing was run "
            'or deployed: put script code under `if __name__ == "__main__":`'
        ) from None
    except Exception as exc:
        sys.modules.pop(name, None)
        _print_user_traceback(exc, file)
        raise InvalidRequestError(
            f"{path} raised {type(exc).__name__} while it was imported (its traceback is "
            "above): fix it and run the command again"
        ) from None
    return module


def _print_user_traceback(exc: BaseException, file: Path) -> None:
    """The traceback of an exception raised in the user's ``file`` (importing it, or its
    local entrypoint), from its first frame in that file on, as ``python FILE`` would show
    it: the CLI's, typer's and importlib's frames left out. A SyntaxError has no such frame:
    its own lines point at the code."""
    tb = exc.__traceback__
    while tb is not None and Path(tb.tb_frame.f_code.co_filename) != file:
        tb = tb.tb_next
    if tb is None:
        # Raised by no line of the file (a function run by name, FILE::NAME, that raised in
        # its container): the exception and its remote traceback, not the CLI's own frames.
        lines = traceback.format_exception_only(type(exc), exc)
    else:
        lines = traceback.format_exception(type(exc), exc, tb or exc.__traceback__)
    # A remote exception's message is text its function chose: shown, never acted on.
    sys.stderr.write(clean("".join(lines), lines=True))
    sys.stderr.flush()


def _find_entrypoint(module: Any, wanted: str | None) -> LocalEntrypoint:
    entries: dict[str, LocalEntrypoint] = {}
    for value in vars(module).values():
        if isinstance(value, App):
            entries.update(value.entrypoints)
    if wanted:
        if wanted in entries:
            return entries[wanted]
        functions = {
            n: f
            for v in vars(module).values()
            if isinstance(v, App)
            for n, f in v.functions.items()
        }
        if wanted in functions:
            return _function_entrypoint(functions[wanted])
        classes = {
            n: c for v in vars(module).values() if isinstance(v, App) for n, c in v.classes.items()
        }
        cls_name, _, method = wanted.partition(".")
        if cls_name in classes:
            return _method_entrypoint(classes[cls_name], method)
        targets = {*entries, *functions}
        targets |= {f"{n}.{m}" for n, c in classes.items() for m in c.methods}
        raise InvalidRequestError(
            f"no local entrypoint, function or class method {wanted!r} in {module.__name__}; "
            "found: " + (", ".join(sorted(targets)) or "none")
        )
    if len(entries) == 1:
        return next(iter(entries.values()))
    if not entries:
        names = sorted(n for v in vars(module).values() if isinstance(v, App) for n in v.functions)
        raise InvalidRequestError(
            f"{module.__name__} has no @app.local_entrypoint(); add one, or run one of its "
            f"functions with FILE::NAME ({', '.join(names) or 'it has none'})"
        )
    raise InvalidRequestError(
        f"{module.__name__} has several entrypoints ({', '.join(sorted(entries))}); "
        "pick one with FILE::NAME"
    )


def _function_entrypoint(fn: Function[Any, Any]) -> LocalEntrypoint:
    """``crucible run FILE::FUNCTION --x 1``: the function called once in a container with
    ``x=1``, its result printed (a generator's values as a list), as Modal's ``modal run``
    does for a function."""
    if fn.kind in ("web_endpoint", "class"):
        what = (
            "a web endpoint (deploy it and call it over HTTP)"
            if fn.kind == "web_endpoint"
            else ("a class (call its methods from a local entrypoint)")
        )
        raise InvalidRequestError(
            f"{fn.name} is {what}; `crucible run FILE::NAME` runs a function or a local entrypoint"
        )

    @functools.wraps(fn.raw_f)  # the function's parameters: --name value, converted as such
    def call(**kwargs: Any) -> Any:
        if fn.kind == "generator":
            return list(fn.remote_gen(**kwargs))
        return fn.remote(**kwargs)

    return LocalEntrypoint(fn.app, call, fn.name)


def _method_entrypoint(owner: Cls, method: str) -> LocalEntrypoint:
    """``crucible run FILE::Model.predict --x 1``: the method of the class's default
    instance called once in a container, as ``modal run`` does."""
    name = owner.name
    if method and method not in owner.methods:
        raise InvalidRequestError(
            f"{name} has no method {method!r} (an @crucible.method()); run one of "
            + ", ".join(f"FILE::{name}.{m}" for m in owner.methods)
        )
    if not method:
        raise InvalidRequestError(
            f"{name} is a class (@app.cls): run one of its methods with FILE::{name}.METHOD "
            f"({', '.join(f'FILE::{name}.{m}' for m in owner.methods)})"
        )
    try:
        handle = getattr(owner(), method)
    except InvalidRequestError as exc:  # a parameter with no default
        raise InvalidRequestError(
            f"{exc.message}; `crucible run FILE::{name}.{method}` uses the class's default "
            f"parameters: call {name}(...).{method}.remote(...) from a local entrypoint"
        ) from None
    raw = getattr(owner.cls, method)
    sig = inspect.signature(raw)

    def call(**kwargs: Any) -> Any:
        if handle._is_generator():
            return list(handle.remote_gen(**kwargs))
        return handle.remote(**kwargs)

    call.__doc__ = raw.__doc__
    call.__signature__ = sig.replace(parameters=list(sig.parameters.values())[1:])  # type: ignore[attr-defined]
    return LocalEntrypoint(owner.app, call, f"{name}.{method}")


def call_entrypoint(entry: LocalEntrypoint, kwargs: dict[str, Any]) -> Any:
    """Call the entrypoint; an ``async def`` one is run to its end in an event loop of its
    own (it returned a coroutine nobody would await)."""
    result = entry(**kwargs)
    if inspect.isawaitable(result):
        return asyncio.run(_awaited(result))
    return result


async def _awaited(result: Any) -> Any:
    return await result


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _is_bool(ann: Any) -> bool:
    return ann is bool or ann == "bool"


def _split_equals(args: list[str]) -> list[str]:
    """``--name=value`` (click's and ``modal run``'s form) as ``--name value``."""
    out: list[str] = []
    for a in args:
        if a.startswith("--") and "=" in a:
            flag, _, value = a.partition("=")
            out += [flag, value]
        else:
            out.append(a)
    return out


def entrypoint_help(entry: LocalEntrypoint, target: str) -> str:
    """``crucible run FILE --help``: the entrypoint's parameters, as options."""
    sig = inspect.signature(entry.raw_f)
    lines = [f"Usage: crucible run {target} [OPTIONS]", ""]
    doc = inspect.getdoc(entry.raw_f)
    if doc:
        lines += [doc, ""]
    lines.append(f"Options of {entry.name}():" if sig.parameters else f"{entry.name}() takes none.")
    for name, p in sig.parameters.items():
        flag = "--" + name.replace("_", "-")
        ann = p.annotation
        kind = getattr(ann, "__name__", ann if isinstance(ann, str) else "")
        if _is_bool(ann):
            flag += f" / --no-{name.replace('_', '-')}"
        elif kind:
            flag += f" {str(kind).upper()}"
        else:
            flag += " VALUE"
        default = "required" if p.default is inspect.Parameter.empty else f"default: {p.default!r}"
        lines.append(f"  {flag}  ({default})")
    return "\n".join(lines)


def _kwargs(entry: LocalEntrypoint, args: list[str]) -> dict[str, Any]:
    """``--name value`` pairs, converted with the entrypoint's annotations; a ``bool``
    parameter is also a flag (``--verbose``, ``--no-verbose``)."""
    sig = inspect.signature(entry.raw_f)
    out: dict[str, Any] = {}
    i = 0
    args = _split_equals(args)
    while i < len(args):
        flag = args[i]
        if not flag.startswith("--"):
            raise InvalidRequestError(f"expected --name value, got {flag!r}")
        key = flag[2:].replace("-", "_")
        negated = key.removeprefix("no_")
        if (
            key not in sig.parameters
            and negated in sig.parameters
            and _is_bool(sig.parameters[negated].annotation)
        ):
            out[negated] = False
            i += 1
            continue
        if key in sig.parameters and _is_bool(sig.parameters[key].annotation):
            given = args[i + 1] if i + 1 < len(args) else None
            if given is None or given.startswith("--"):
                out[key] = True
                i += 1
                continue
            if given.lower() not in (*_TRUE, *_FALSE):
                raise InvalidRequestError(
                    f"{flag}={given!r} is not a boolean: use {flag} or --no-{flag[2:]}, or "
                    "true/false"
                )
            out[key] = given.lower() in _TRUE
            i += 2
            continue
        if key not in sig.parameters:
            raise InvalidRequestError(
                f"{entry.name}() has no parameter {key!r}; it takes: " + ", ".join(sig.parameters)
            )
        if i + 1 >= len(args):
            raise InvalidRequestError(f"{flag} needs a value")
        raw = args[i + 1]
        ann = sig.parameters[key].annotation
        conv = {int: int, float: float, "int": int, "float": float}.get(ann, str)
        try:
            out[key] = conv(raw)
        except ValueError:
            raise InvalidRequestError(f"{flag}={raw!r} is not a valid {conv.__name__}") from None
        i += 2
    missing = [
        name
        for name, p in sig.parameters.items()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and name not in out
    ]
    if missing:  # said before anything starts, not by a container's TypeError
        flags = " ".join(f"--{name.replace('_', '-')} VALUE" for name in missing)
        raise InvalidRequestError(
            f"{entry.name}() needs {flags} (it takes: {', '.join(sig.parameters)})"
        )
    return out


@contextmanager
def _terminate_like_interrupt() -> Iterator[None]:
    """SIGTERM (``timeout``, a cancelled CI job, ``kill``) ends the run the way Ctrl-C does:
    the exception unwinds ``app.run()``, which stops the ephemeral app (its queued calls are
    cancelled, its containers stopped), and the process exits 143 (128 + SIGTERM). A second
    SIGTERM during that clean-up ends the process at once."""

    def on_term(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def register(app: typer.Typer) -> None:
    @app.command(
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,  # --help after FILE lists the entrypoint's own options
    )
    def run(
        ctx: typer.Context,
        target: str | None = typer.Argument(
            None,
            help="FILE.py, or FILE.py::NAME (a local entrypoint, a function or a class's "
            "Class.method, called once)",
            show_default=False,
        ),
    ) -> None:
        """Run an app's local entrypoint (or one function, by name); its functions run in
        containers on the exchange (an embedded one is started if none is configured).
        `crucible run FILE --help` lists the entrypoint's options.

        Examples: `crucible run app.py` (its local entrypoint), `crucible run
        app.py::square --x 7` (one function, its arguments as options)."""
        if target is None or target in ("--help", "-h"):
            typer.echo(ctx.get_help())
            if target is None:
                raise typer.Exit(2)
            raise typer.Exit()
        file, _, wanted = target.partition("::")
        module = import_app_file(Path(file))
        if "--help" in ctx.args or "-h" in ctx.args:
            try:
                entry = _find_entrypoint(module, wanted or None)
            except InvalidRequestError as exc:  # several targets, or none: which there are
                typer.echo(f"Usage: crucible run {file}::NAME [OPTIONS]\n\n{exc.message}")
                raise typer.Exit() from None
            typer.echo(entrypoint_help(entry, target))
            raise typer.Exit()
        entry = _find_entrypoint(module, wanted or None)
        kwargs = _kwargs(entry, list(ctx.args))
        config = ensure_running(load_settings())
        client = Client(config.server_url, config.token)
        app_id: str | None = None
        echo: _LogEcho | None = None
        try:
            with _terminate_like_interrupt(), entry.app.run(client=client):
                app_id = entry.app.app_id
                if app_id is not None:
                    echo = _LogEcho(Client(config.server_url, config.token), app_id)
                result = call_entrypoint(entry, kwargs)
            _wait_stopped(client, app_id)
            if echo is not None:
                echo.finish()
            if result is not None:
                typer.echo(clean(result, lines=True))
        except (Error, KeyboardInterrupt):
            raise
        except Exception as exc:  # the entrypoint's own (or its remote calls') exception
            _wait_stopped(client, app_id)
            if echo is not None:
                echo.finish()
            _print_user_traceback(exc, Path(file).resolve())
            raise SystemExit(1) from None
        finally:
            if echo is not None:
                echo.finish(drain=False)
            client.close()


class _LogEcho:
    """What the app's containers print, written to this terminal's standard error as it
    arrives (as `modal run` streams it; the result goes to standard output), each line made
    inert (cli/_output.clean). A thread follows the app's log with short long polls."""

    def __init__(self, client: Client, app_id: str) -> None:
        self.client, self.app_id = client, app_id
        self.after = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._finished = False
        self._thread = threading.Thread(target=self._follow, name="crucible-run-logs", daemon=True)
        self._thread.start()

    def _read(self, wait_s: float) -> int:
        page = LogPage.model_validate(
            self.client.get(f"/v1/apps/{self.app_id}/logs?after={self.after}&wait_s={wait_s:g}")
        )
        with self._lock:
            for x in page.lines:
                sys.stderr.write(clean(x.line) + "\n")
            sys.stderr.flush()
            self.after = max(self.after, page.next_after)
        return len(page.lines)

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                self._read(1.0)
            except Exception:  # the exchange away for a moment: the result still comes
                self._stop.wait(1.0)

    def finish(self, *, drain: bool = True) -> None:
        """Stop following; with ``drain``, print what arrived since the last read first.
        Once: the run's ``finally`` calls it again (without draining) on every way out."""
        if self._finished:
            return
        self._finished = True
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=5.0)
        if drain:
            try:
                while self._read(0) > 0:
                    pass
            except Exception:
                pass
        self.client.close()


# How long `crucible run` waits, once its app stopped, for the app's containers to stop.
_STOPPING_S = 15.0


def _wait_stopped(client: Client, app_id: str | None) -> None:
    """Wait (a while) for the stopped app's containers to stop: their last seconds are
    billed when they have, and a `crucible bill` run right after should count them."""
    if app_id is None:
        return
    deadline = time.monotonic() + _STOPPING_S
    try:
        while (left := client.get_app(app_id).containers) > 0:
            if time.monotonic() >= deadline:
                typer.echo(
                    f"{left} container(s) of the app are still stopping; `crucible bill` "
                    "counts their time once they have stopped",
                    err=True,
                )
                return
            time.sleep(0.1)
    except Error:
        return  # the exchange went away: nothing to wait for
