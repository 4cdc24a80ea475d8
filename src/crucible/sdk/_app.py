"""``crucible.App``: a named group of functions, run ephemerally with ``app.run()``."""

from __future__ import annotations

import contextlib
import inspect
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from pydantic import ValidationError

from crucible.errors import Error, InvalidGpuError, InvalidRequestError, InvalidResourcesError
from crucible.protocol.apps import CodeRef, FunctionCreate
from crucible.protocol.common import (
    GpuAsk,
    Resources,
    RetryPolicy,
)
from crucible.protocol.deployments import DeploymentInfo
from crucible.protocol.gpus import parse_gpu_spec, parse_memory_mib
from crucible.protocol.volumes import check_mount_path
from crucible.sdk._checks import (
    check_int,
    check_name,
    check_network,
    check_number,
    check_scaling,
    from_validation_error,
)
from crucible.sdk._client import Client
from crucible.sdk._cls import Cls
from crucible.sdk._concurrency import BATCHING_ATTR, CONCURRENCY_ATTR
from crucible.sdk._functions import Function, Retries
from crucible.sdk._hooks import enter_hooks
from crucible.sdk._image import Image
from crucible.sdk._market_terms import MARKET_WIRE_NAMES, market_terms
from crucible.sdk._packaging import bundle_for_module
from crucible.sdk._schedules import Schedule
from crucible.sdk._secrets import Secret
from crucible.sdk._volumes import Volume
from crucible.sdk._web import WEB_ATTR

__all__ = ["App", "LocalEntrypoint"]

# Why app.run() or app.deploy() found itself in a container: the module-level mistake.
_AT_MODULE_LEVEL = (
    "the file that defines the app is imported again in every container, so code at its "
    'module level runs there too: put `with app.run():` under `if __name__ == "__main__":` '
    "(or run the file with `crucible run FILE`)"
)

P = ParamSpec("P")
R = TypeVar("R")

_PARENS = (
    "Did you forget parentheses? Write `@app.{name}()`, not `@app.{name}`, "
    'and pass options by keyword, e.g. `@app.function(gpu="H100")`.'
)


# The largest memory a function may ask for (the wire model's bound).
_MAX_MEMORY_MIB = 16 * 1024 * 1024
# Wire field names -> the decorator argument a builder wrote.
_WIRE_NAMES = {
    "memory_mib": "memory",
    "timeout_s": "timeout",
    "scaledown_window_s": "scaledown_window",
    **MARKET_WIRE_NAMES,
    "gpus": "gpu",
    "retries": "retries",
    "max_retries": "retries",
    "initial_delay_s": "Retries.initial_delay",
    "backoff_coefficient": "Retries.backoff_coefficient",
    "max_delay_s": "Retries.max_delay",
    "batch_wait_ms": "wait_ms",
}

# The server stops an ephemeral app it has not heard from for a minute (by default).
_HEARTBEAT_S = 10.0


def _heartbeat(client: Client, app_id: str, done: threading.Event) -> None:
    """Tell the exchange the app's client is alive, until ``done``."""
    try:
        while not done.wait(_HEARTBEAT_S):
            with contextlib.suppress(Error):  # a restarting server: the next beat will do
                client.heartbeat_app(app_id)
    finally:
        client.transport.close_thread()


class LocalEntrypoint:
    """A function that runs on the builder's machine with the app running
    (``crucible run file.py``)."""

    def __init__(self, app: App, raw_f: Callable[..., Any], name: str) -> None:
        self.app = app
        self.raw_f = raw_f
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.raw_f(*args, **kwargs)


# Modal's older decorator options and what they are called here (docs/builders.md, "Coming
# from Modal").
RENAMED = {
    "keep_warm": "use min_containers= (containers kept warm with no work)",
    "concurrency_limit": "use max_containers= (the most containers that run at once)",
    "container_idle_timeout": (
        "use scaledown_window= (seconds an idle container waits before it stops)"
    ),
    "allow_concurrent_inputs": (
        "decorate the function with @crucible.concurrent(max_inputs=N) under @app.function()"
    ),
}


class App:
    """A named set of functions. ``crucible run file.py`` runs the file's local entrypoint
    with the app live; ``with app.run():`` does the same from plain Python."""

    def __init__(self, name: str | None = None) -> None:
        check_name("App name", name, optional=True)
        self.name = name or "app"
        self.functions: dict[str, Function[Any, Any]] = {}
        self.entrypoints: dict[str, LocalEntrypoint] = {}
        self._app_id: str | None = None
        self._client: Client | None = None
        self.classes: dict[str, Cls] = {}
        # Inside a container whose function belongs to this app (set by the worker when it
        # loads the function): the app's id on the exchange, and the container's own
        # connection, through which this app's functions are called (a function calling
        # another of its app).
        self._container_app_id: str | None = None
        self._container_client: Client | None = None

    def __repr__(self) -> str:
        return f"App({self.name!r})"

    @property
    def app_id(self) -> str | None:
        return self._app_id

    def _in_container(self, what: str) -> tuple[Client, str]:
        """Inside a function's container: the container's connection and the id of the app
        it runs, to call ``what`` (``"f.remote()"``, for the refusal) with. Refused for an
        app other than the container's own (another App object of the module, or one it
        imports): a container calls only the functions of its own app."""
        if self._container_app_id is None:
            raise Error(
                f"{what} inside a function's container: it belongs to the app {self.name!r}, "
                "not to the app this container runs, and a container calls only the functions "
                "of its own app. Define the function in the same app, or call it from the "
                "builder's side (return what it needs to the caller), or pass the work "
                "through a crucible.Queue"
            )
        if self._container_client is None:
            self._container_client = Client.in_container()
        return self._container_client, self._container_app_id

    # -- decorators --------------------------------------------------------------------------
    def function(
        self,
        _func: Any = None,
        *,
        gpu: str | list[str] | None = None,
        cpu: float | None = None,
        memory: int | str | None = None,
        timeout: float = 300.0,
        retries: int | Retries = 0,
        max_containers: int | None = None,
        scaledown_window: float | None = None,
        image: Image | None = None,
        network: bool | Sequence[str] = False,
        name: str | None = None,
        min_containers: int = 0,
        buffer_containers: int = 0,
        tier: str = "on-demand",
        bid: float | None = None,
        max_price: float | None = None,
        region: str | None = None,
        min_reliability: float = 0.0,
        prefer: str = "cheapest",
        secrets: Sequence[Secret] = (),
        schedule: Schedule | None = None,
        volumes: Mapping[str, Volume] | None = None,
        max_carbon_g_per_kwh: int | None = None,
        verified: bool = False,
        keep_warm: int | None = None,
        concurrency_limit: int | None = None,
        container_idle_timeout: float | None = None,
        allow_concurrent_inputs: int | None = None,
    ) -> Callable[[Callable[P, R]], Function[P, R]]:
        """Register a function to run in containers.

        ``gpu``: ``"H100"``, ``"A100-80GB:2"``, or a list in fallback order. ``cpu``: cores
        (fractions allowed). ``memory``: MiB or a string such as ``"512MiB"``. ``timeout``:
        seconds per attempt. ``retries``: extra attempts after a failure (an int, or
        :class:`Retries` for the backoff). ``image``: a :class:`crucible.Image` to run in
        (default: the host's own environment). ``network``: what a sandboxed container may
        reach: ``False`` (nothing; the default, the exchange stays reachable), ``True`` (every
        public IPv4 address) or a list of ``"HOST:PORT"`` targets such as
        ``["pypi.org:443", "10.1.2.0/24:5432"]`` (docs/builders.md#network).

        Scaling: ``min_containers`` are kept warm even with no work (and billed),
        ``buffer_containers`` idle ones are kept on top of what the load needs, at most
        ``max_containers`` run; idle containers above that go after ``scaledown_window`` s.

        How GPUs are bought on the market (docs/market.md): ``tier`` is ``"on-demand"``,
        ``"interruptible"`` (preemptible, pays ``bid`` $/GPU-hour, default each host's minimum)
        or ``"reserved"`` (runs in your reservations); ``max_price`` bounds the $/GPU-hour
        paid; ``region`` and ``min_reliability`` (0..1) filter hosts; ``prefer`` ranks them:
        ``"cheapest"``, ``"greenest"`` or ``"fastest"``.

        ``secrets``: :class:`crucible.Secret` references whose values become environment
        variables of the containers. ``schedule``: :class:`crucible.Cron` or
        :class:`crucible.Period`; a deployed app then calls the function by itself.
        ``volumes``: ``{"/data": crucible.Volume.from_name("data")}`` mounts volumes of your
        account (on sandboxed hosts). ``max_carbon_g_per_kwh`` refuses hosts above
        that carbon intensity (and hosts that declare none). ``verified=True`` runs
        only on hosts the exchange verified (their self-test matched the GPU catalog).

        Modal's older names (``keep_warm``, ``concurrency_limit``, ``container_idle_timeout``,
        ``allow_concurrent_inputs``) are refused with the name to use instead.
        """
        if _func is not None:
            raise InvalidRequestError(_PARENS.format(name="function"))
        for old, value in (
            ("keep_warm", keep_warm),
            ("concurrency_limit", concurrency_limit),
            ("container_idle_timeout", container_idle_timeout),
            ("allow_concurrent_inputs", allow_concurrent_inputs),
        ):
            if value is not None:
                raise InvalidRequestError(f"{old}={value!r}: {RENAMED[old]}")
        try:
            gpus = parse_gpu_spec(gpu)
        except InvalidGpuError as exc:
            if exc.message.startswith("gpu="):
                raise
            raise InvalidGpuError(f"gpu={gpu!r}: {exc.message}"[:300]) from None
        memory_mib = parse_memory_mib(memory)
        if memory_mib > _MAX_MEMORY_MIB:
            raise InvalidResourcesError(
                f"memory must be <= {_MAX_MEMORY_MIB} MiB (16 TiB), got {memory!r}"
            )
        check_number("cpu", cpu, 0, 1024, lo_open=True, optional=True, unit="cores")
        check_number("timeout", timeout, 0, 7 * 86400, lo_open=True, unit="seconds")
        policy = retries if isinstance(retries, Retries) else None
        if policy is None:
            if isinstance(retries, bool) or not isinstance(retries, int):
                raise InvalidRequestError(
                    f"retries must be an int from 0 to 100 or crucible.Retries(...), "
                    f"got {retries!r} ({type(retries).__name__})"
                )
            check_int("retries", retries, 0, 100)
            policy = Retries(max_retries=retries)
        if image is not None and not isinstance(image, Image):
            raise InvalidRequestError(f"image must be a crucible.Image, got {type(image).__name__}")
        network = check_network(network)
        check_name("name", name, optional=True)
        if not isinstance(secrets, list | tuple) or not all(isinstance(x, Secret) for x in secrets):
            raise InvalidRequestError(
                f"secrets must be a list of crucible.Secret, e.g. "
                f'[crucible.Secret.from_name("hf")], got {type(secrets).__name__}'
            )
        mounts: dict[str, str] = {}
        if volumes is not None:
            if not isinstance(volumes, Mapping) or not all(
                isinstance(v, Volume) for v in volumes.values()
            ):
                raise InvalidRequestError(
                    "volumes must map mount paths to crucible.Volume, e.g. "
                    '{"/data": crucible.Volume.from_name("data")}'
                )
            for path, vol in volumes.items():
                try:
                    mounts[check_mount_path(path)] = vol.name
                except ValueError as exc:
                    raise InvalidRequestError(f"volumes: {exc}") from None
        if schedule is not None and not isinstance(schedule, Schedule):
            raise InvalidRequestError(
                "schedule must be crucible.Cron(...) or crucible.Period(...), "
                f"got {type(schedule).__name__}"
            )

        market = market_terms(
            tier,
            bid,
            max_price,
            region=region,
            min_reliability=min_reliability,
            prefer=prefer,
            max_carbon_g_per_kwh=max_carbon_g_per_kwh,
            verified=verified,
        )
        check_scaling(min_containers, max_containers)
        check_int("buffer_containers", buffer_containers, 0, 100_000)
        check_number("scaledown_window", scaledown_window, 0, 86400, optional=True, unit="seconds")

        def decorate(f: Callable[P, R]) -> Function[P, R]:
            if isinstance(f, Function):
                raise InvalidRequestError(f"{f.name} is already registered with @app.function()")
            if not callable(f):
                raise InvalidRequestError("@app.function() decorates a function")
            if inspect.isasyncgenfunction(f):
                raise InvalidRequestError(
                    f"{f.__name__} is an async generator; write a plain generator (def with "
                    "yield) and call it with .remote_gen()"
                )
            fname = name or f.__name__
            check_name("the function's name (pass name= to choose another)", fname)
            if "<locals>" in f.__qualname__:
                raise InvalidRequestError(
                    f"{fname} is defined inside another function; define functions at module "
                    "level so containers can import them"
                )
            if schedule is not None and inspect.isfunction(f):
                # Each tick calls it with no arguments: one it needs fails every tick.
                needed = [
                    p.name
                    for p in inspect.signature(f).parameters.values()
                    if p.default is inspect.Parameter.empty
                    and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                ]
                if needed:
                    raise InvalidRequestError(
                        f"{fname} runs on a schedule, which calls it with no arguments, but it "
                        f"needs {', '.join(needed)}: give them defaults"
                    )
            try:
                options = {
                    "name": fname,
                    "resources": Resources(
                        cpu=float(cpu) if cpu is not None else 0.25,
                        memory_mib=memory_mib,
                        gpus=[GpuAsk(model=g.model, count=g.count) for g in gpus],
                    ),
                    "timeout_s": float(timeout),
                    "retries": RetryPolicy.model_validate(policy.to_wire()),
                    "max_containers": max_containers,
                    "scaledown_window_s": scaledown_window,
                    "min_containers": min_containers,
                    "buffer_containers": buffer_containers,
                    "market": market,
                    "image": image,
                    "network": network,
                    "secrets": list(secrets),
                    "schedule": schedule.spec if schedule is not None else None,
                    "volumes": mounts,
                }
                max_inputs, target_inputs = getattr(f, CONCURRENCY_ATTR, (1, None))
                options["max_inputs"], options["target_inputs"] = max_inputs, target_inputs
                batching = getattr(f, BATCHING_ATTR, (1, 0))
                options["max_batch_size"], options["batch_wait_ms"] = batching
                options["web"] = getattr(f, WEB_ATTR, None)
                # Everything the exchange would refuse is refused here, in the same words.
                _function_create(options, _UNCHECKED_CODE, is_async=False, is_generator=False)
            except ValidationError as exc:
                where = f"@app.function() on {fname}"
                raise from_validation_error(exc, where, _WIRE_NAMES) from None
            taken = self.functions.get(fname)
            before = (
                taken.raw_f if taken is not None else getattr(self.classes.get(fname), "cls", None)
            )
            if before is not None and _where(before) != _where(f):
                # The later one would replace the earlier one silently, in every container.
                raise InvalidRequestError(
                    f"app {self.name!r} already has a function named {fname!r} "
                    f"({_where(before)}); give this one ({_where(f)}) another name with name=..."
                )
            fn = Function(self, f, options)
            self.functions[fname] = fn
            return fn

        return decorate

    def local_entrypoint(
        self, _func: Any = None, *, name: str | None = None
    ) -> Callable[[Callable[..., Any]], LocalEntrypoint]:
        """Register the function ``crucible run`` calls on this machine."""
        if _func is not None:
            raise InvalidRequestError(_PARENS.format(name="local_entrypoint"))
        check_name("local_entrypoint name", name, optional=True)

        def decorate(f: Callable[..., Any]) -> LocalEntrypoint:
            entry = LocalEntrypoint(self, f, name or f.__name__)
            self.entrypoints[entry.name] = entry
            return entry

        return decorate

    # -- running -----------------------------------------------------------------------------
    @contextmanager
    def run(self, *, client: Client | None = None) -> Iterator[App]:
        """Create an ephemeral app on the exchange, ship the code, register the functions,
        and stop the app (and its containers) when the block ends."""
        if self._app_id is not None:
            raise Error(f"app {self.name!r} is already running")
        client = client or Client.from_settings()
        client.builder_only("app.run()", _AT_MODULE_LEVEL)
        info = client.create_app(self.name, ephemeral=True)
        self._app_id, self._client = info.id, client
        done = threading.Event()
        beat = threading.Thread(
            target=_heartbeat, args=(client, info.id, done), name="crucible-heartbeat", daemon=True
        )
        beat.start()
        try:
            self._register(client, info.id)
            yield self
        finally:
            done.set()
            beat.join()
            try:
                client.stop_app(info.id)
            finally:
                for fn in self.functions.values():
                    fn._hydrate(None, None)
                for owner in self.classes.values():
                    owner._pools.clear()
                self._app_id = None

    def deploy(self, *, name: str | None = None, client: Client | None = None) -> DeploymentInfo:
        """Deploy the app: a new version of the deployment ``name`` (default: the app's
        name) that keeps running after this process exits. Its functions are registered,
        then it becomes current; the previous version finishes the calls it has and stops.
        If registering fails, the previous version keeps serving. Call its functions from
        anywhere with ``crucible.Function.from_name(name, function)``, and its classes with
        ``crucible.Cls.from_name(name, class)``."""
        check_name("deploy name", name, optional=True)
        client = client or Client.from_settings()
        client.builder_only("app.deploy()", _AT_MODULE_LEVEL)
        started = client.start_version(name or self.name)
        try:
            self._register(client, started.app_id)
            info = client.activate(started.name, started.app_id)
        except BaseException:
            with contextlib.suppress(Exception):
                client.stop_app(started.app_id)  # the unfinished version; the old one serves
            raise
        finally:
            for fn in self.functions.values():
                fn._hydrate(None, None)
            for owner in self.classes.values():
                owner._pools.clear()
        return info

    def cls(self, _cls: Any = None, **options: Any) -> Callable[[type], Cls]:
        """Register a class whose containers each keep one instance: ``@crucible.enter()``
        methods run once per container, ``@crucible.exit()`` ones when it stops, and each
        input calls one ``@crucible.method()``. Takes the options of :meth:`function`
        (``gpu``, ``cpu``, ``memory``, ``timeout``, ``retries``, scaling, market, image)."""
        if _cls is not None:
            raise InvalidRequestError(_PARENS.format(name="cls"))
        if options.get("schedule") is not None:
            raise InvalidRequestError(
                "schedule= is for @app.function(); a class runs on a schedule through a "
                "scheduled function that calls its methods"
            )
        allowed = [n for n in inspect.signature(self.function).parameters if n != "_func"]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise InvalidRequestError(
                f"@app.cls() got an unknown argument {unknown[0]!r}; it takes "
                + ", ".join(n for n in allowed if n not in RENAMED)
            )
        register = self.function(**options)

        def decorate(c: type) -> Cls:
            if not isinstance(c, type):
                raise InvalidRequestError("@app.cls() decorates a class")
            if hasattr(c, BATCHING_ATTR):  # the worker would batch the method names
                raise InvalidRequestError(
                    f"@crucible.batched on the class {c.__name__}: dynamic batching is for "
                    "@app.function() functions; a class's methods are not batched yet"
                )
            for attr, member in vars(c).items():
                # Read from the class only: on a method they were silently ignored.
                if getattr(member, BATCHING_ATTR, None) is not None:
                    raise InvalidRequestError(
                        f"{c.__name__}.{attr}: @crucible.batched is for @app.function() "
                        "functions; a class's methods are not batched yet"
                    )
                if getattr(member, CONCURRENCY_ATTR, None) is not None:
                    raise InvalidRequestError(
                        f"{c.__name__}.{attr}: put @crucible.concurrent on the class (under "
                        "@app.cls()): its containers then run that many inputs at once, of "
                        "any of its methods"
                    )
                if getattr(member, WEB_ATTR, None) is not None:
                    # It was ignored: the method became a plain one, with no URL.
                    raise InvalidRequestError(
                        f"{c.__name__}.{attr}: a web endpoint is a module-level function, not "
                        "a class's method; serve it from an @app.function() that loads what "
                        "it needs in a @crucible.enter() hook (docs/builders.md)"
                    )
            template = register(c)  # validates and builds the options; not registered as is
            del self.functions[template.name]  # register() refused a name already taken
            owner = Cls(self, c, template.options)
            self.classes[c.__name__] = owner
            return owner

        return decorate

    def _register(self, client: Client, app_id: str) -> None:
        fns = list(self.functions.values())
        fns += [owner.registered_at_start() for owner in self.classes.values()]
        self._register_functions(client, app_id, fns)

    def _register_functions(
        self, client: Client, app_id: str, fns: list[Function[Any, Any]]
    ) -> None:
        if not fns:
            return
        bundles: dict[str, Any] = {}
        uploaded: set[str] = set()
        secret_names: dict[int, str] = {}  # Secret.from_dict values are stored once per run
        specs: list[FunctionCreate] = []
        for fn in fns:
            module = sys.modules[fn.raw_f.__module__]
            bundle = bundles.get(module.__name__)
            if bundle is None:
                bundle = bundles[module.__name__] = bundle_for_module(module)
                client.upload_blob(bundle.data)
            image: Image | None = fn.options.get("image")
            for sha, data in (image.blobs() if image is not None else {}).items():
                if sha not in uploaded:
                    client.upload_blob(data)
                    uploaded.add(sha)
            names = []
            for secret in fn.options.get("secrets", ()):
                if id(secret) not in secret_names:
                    secret_names[id(secret)] = secret._resolve(client, app_id)
                names.append(secret_names[id(secret)])
            code = CodeRef(
                bundle=bundle.sha256,
                module=bundle.module,
                qualname=fn.raw_f.__qualname__,
                snapshot=bool(enter_hooks(module, snapshot=True)),
            )
            try:
                specs.append(
                    _function_create(
                        fn.options,
                        code,
                        is_async=fn.is_async,
                        is_generator=fn.is_generator,
                        image=image.spec() if image is not None else None,
                        secret_names=names,
                    )
                )
            except ValidationError as exc:
                raise from_validation_error(exc, fn.name, _WIRE_NAMES) from None
        infos = client.create_functions(app_id, specs)
        by_name = {fn.name: fn for fn in fns}
        for info in infos:
            by_name[info.name]._hydrate(client, info.id)


# A placeholder code reference: decorating checks the spec before the code is bundled.
_UNCHECKED_CODE = CodeRef(bundle="0" * 64, module="unchecked", qualname="unchecked")


def _function_create(
    options: dict[str, Any],
    code: CodeRef,
    *,
    is_async: bool,
    is_generator: bool,
    image: Any = None,
    secret_names: Sequence[str] = (),
) -> FunctionCreate:
    """The wire spec of a function from its decorator options (raises ValidationError).
    ``secret_names``: what its secrets are stored as (known once the app runs)."""
    return FunctionCreate(
        name=options["name"],
        code=code,
        resources=options["resources"],
        timeout_s=options["timeout_s"],
        retries=options["retries"],
        max_containers=options["max_containers"],
        scaledown_window_s=options["scaledown_window_s"],
        max_inputs=options.get("max_inputs", 1),
        target_inputs=options.get("target_inputs"),
        max_batch_size=options.get("max_batch_size", 1),
        batch_wait_ms=options.get("batch_wait_ms", 0),
        class_params=options.get("class_params"),
        class_spec=options.get("class_spec"),
        web=options.get("web"),
        min_containers=options["min_containers"],
        buffer_containers=options["buffer_containers"],
        market=options["market"],
        is_async=is_async,
        is_generator=is_generator,
        image=image,
        network=options.get("network", False),
        secrets=list(secret_names),
        schedule=options.get("schedule"),
        volumes=options.get("volumes") or {},
    )


def _where(obj: Any) -> str:
    """Where a function or class is defined: ``module.qualname``."""
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"
