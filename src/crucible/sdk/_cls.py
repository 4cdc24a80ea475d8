"""Classes: ``@app.cls()`` with ``@crucible.enter()``, ``@crucible.exit()`` and
``@crucible.method()``.

A class runs in containers like a function, but each container makes one instance (with the
parameters it was called with) and keeps it: ``@crucible.enter()`` methods run once on it
before the first input (load a model), ``@crucible.exit()`` methods when the container
stops, and each input calls one ``@crucible.method()``::

    @app.cls(gpu="H100")
    class Model:
        def __init__(self, size: str = "small") -> None:
            self.size = size

        @crucible.enter()
        def load(self) -> None:
            self.weights = load_weights(self.size)

        @crucible.method()
        def predict(self, x: float) -> float: ...

    Model().predict.remote(1.0)               # the default pool
    Model(size="large").predict.remote(1.0)   # another pool of containers

Each distinct set of parameters is its own pool of containers (its own function on the
exchange, made the first time it is called). Parameters are bound to ``__init__`` with its
defaults applied first, so ``Model()`` and ``Model(size="small")`` are one pool. Parameters
must be JSON (they name the pool and travel in the function's spec). A generator method
streams with ``Model().method.remote_gen(...)``.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from crucible.errors import Error, InvalidRequestError
from crucible.protocol.classes import ClassParam, ClassSpec, canonical_params, pool_name
from crucible.sdk._aio import aio, aio_iter
from crucible.sdk._client import Client
from crucible.sdk._functions import (
    FROM_A_CONTAINER,
    Function,
    FunctionCall,
    _check_map_options,
)
from crucible.sdk._runtime import is_local

if TYPE_CHECKING:
    from crucible.sdk._app import App

__all__ = ["EXIT_MARK", "METHOD_MARK", "Cls", "DeployedCls", "exit", "method"]

F = TypeVar("F", bound=Callable[..., Any])
METHOD_MARK = "__crucible_method__"
EXIT_MARK = "__crucible_exit__"


def method(_func: Any = None, /) -> Callable[[F], F]:
    """Mark a method of an ``@app.cls()`` class as callable remotely."""
    if _func is not None:
        raise InvalidRequestError(
            "Did you forget parentheses? Write `@crucible.method()`, not `@crucible.method`."
        )

    def decorate(f: F) -> F:
        if inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f):
            raise InvalidRequestError(
                f"{f.__qualname__} is an async def: an @app.cls() method is a plain def for now "
                "(an async function of its own is @app.function() on an async def)"
            )
        setattr(f, METHOD_MARK, True)
        return f

    return decorate


def exit(_func: Any = None, /) -> Callable[[F], F]:
    """Mark a method of an ``@app.cls()`` class to run when its container stops."""
    if _func is not None:
        raise InvalidRequestError(
            "Did you forget parentheses? Write `@crucible.exit()`, not `@crucible.exit`."
        )

    def decorate(f: F) -> F:
        setattr(f, EXIT_MARK, True)
        return f

    return decorate


def methods_of(cls: type) -> list[str]:
    return [n for n, v in vars(cls).items() if getattr(v, METHOD_MARK, False)]


def class_spec_of(cls: type, methods: list[str]) -> ClassSpec:
    """What a client needs to name a parameter set's pool without the code: ``__init__``'s
    parameters (required or with a default) and the methods (which stream)."""
    params: list[ClassParam] = []
    any_params = False
    for p in inspect.signature(cls).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            any_params = True
        elif p.kind is p.POSITIONAL_ONLY and p.default is p.empty:
            raise InvalidRequestError(
                f"{cls.__name__}'s parameter {p.name!r} is positional-only: a class's "
                "parameters are passed by name (Model(size=...)); drop the '/'"
            )
        elif p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD:
            if p.default is p.empty:
                params.append(ClassParam(name=p.name, required=True))
            elif _plain_json(p.default):
                params.append(ClassParam(name=p.name, default=p.default))
            else:  # applied by the container; the parameter is left out when not given
                params.append(ClassParam(name=p.name, default_in_code=True))
    generators = [m for m in methods if inspect.isgeneratorfunction(vars(cls)[m])]
    try:
        return ClassSpec(
            params=params, any_params=any_params, methods=methods, generators=generators
        )
    except ValidationError as exc:
        raise InvalidRequestError(f"@app.cls() on {cls.__name__}: {exc}") from None


def _plain_json(value: Any) -> bool:
    """Whether ``value`` is JSON as it is (a tuple, an enum or NaN would come back changed)."""
    if value is None or type(value) in (str, bool):
        return True
    if type(value) is int:  # JSON's integers, as orjson writes them
        return -(2**63) <= value < 2**64
    if type(value) is float:
        return value == value and value not in (float("inf"), float("-inf"))
    if type(value) is list:
        return all(_plain_json(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _plain_json(v) for k, v in value.items())
    return False


def _canonical(name: str, spec: ClassSpec, args: tuple[Any, ...], params: dict[str, Any]) -> Any:
    """The canonical parameters of ``name(**params)`` (see protocol/classes.py), as JSON
    carries them."""
    if args:
        raise InvalidRequestError(f"pass {name}'s parameters by name")
    for key, value in params.items():
        # As they are, or refused: JSON would turn NaN into null (the pool of None), a tuple
        # into a list and a datetime into a string, and the container would get those.
        if not _plain_json(value):
            raise InvalidRequestError(
                f"{name}({key}={value!r}): a parameter must be a JSON value (a string, an "
                "int, a finite float, a bool, None, or lists and dicts of those); pass other "
                "data to a method"
            )
    return canonical_params(spec, name, dict(params))


class Cls:
    """An ``@app.cls()`` class: call it with the class's parameters to get a handle."""

    def __init__(self, app: App, cls: type, options: dict[str, Any]) -> None:
        self.app = app
        self.cls = cls
        self.options = options
        self.name = cls.__name__
        self.methods = methods_of(cls)
        if not self.methods:
            raise InvalidRequestError(
                f"{cls.__name__} has no @crucible.method(); mark the methods to call remotely"
            )
        self.spec = class_spec_of(cls, self.methods)
        self.generators = set(self.spec.generators)
        self._pools: dict[str, Function[..., Any]] = {}

    def __repr__(self) -> str:
        return f"Cls({self.app.name}.{self.name})"

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the handle lacks: a method called on the class itself.
        methods = self.__dict__.get("methods") or ()
        if name in methods:
            raise AttributeError(
                f"{self.name}.{name} is a method of an instance: call it as "
                f"{self.name}().{name}.remote(...) (or {self.name}(param=...).{name})"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __call__(self, *args: Any, **params: Any) -> ClsInstance:
        return ClsInstance(self, _canonical(self.name, self.spec, args, params))

    def pool(self, params: dict[str, Any]) -> Function[..., Any]:
        """The function of a canonical parameter set, registered on the running app at first
        use."""
        name = pool_name(self.name, self.spec, params)
        fn = self._pools.get(name)
        if fn is not None and fn._function_id is not None:
            return fn
        fn = self._function(name, params)
        self._pools[name] = fn
        if self.app._app_id is not None and self.app._client is not None:
            self.app._register_functions(self.app._client, self.app._app_id, [fn])
        return fn

    def _function(self, name: str, params: dict[str, Any]) -> Function[..., Any]:
        options = {**self.options, "name": name, "class_params": params, "class_spec": self.spec}
        return Function(self.app, self.cls, options)

    def registered_at_start(self) -> Function[..., Any]:
        """The function registered with the app: the default pool when no parameter is
        required (so min_containers and buffer_containers apply to it from the start). An
        app (a run or a deployed version) always has one function named after the class,
        which carries the class's spec: the exchange makes the pools of other parameter
        sets from it, for a deployment's callers and for the app's own containers (for a
        class with required parameters it is never called and keeps no containers)."""
        defaults = self.spec.defaults()
        if defaults is not None:
            return self.pool(defaults)
        return self._function(self.name, {})

    def _function_for(self, params: dict[str, Any], method: str, how: str) -> Function[..., Any]:
        if self.app._app_id is not None:
            return self.pool(params)
        what = f"{self.name}().{method}.{how}()"
        if not is_local():  # a function of this app calling the class: its own app's pool
            return self._pool_in_container(params, what)
        raise Error(
            f"{what} needs a running app: call it inside `with app.run():` or from a "
            "@app.local_entrypoint()"
        )

    def _pool_in_container(self, params: dict[str, Any], what: str) -> Function[..., Any]:
        """Inside a container of this app: the pool of ``params``, found (or made from the
        class's function) by the exchange in the container's own app."""
        name = pool_name(self.name, self.spec, params)
        fn = self._pools.get(name)
        if fn is not None and fn._function_id is not None:
            return fn
        client, app_id = self.app._in_container(what)
        info = client.app_class_pool(app_id, self.name, params)
        fn = self._function(info.name, params)
        fn._hydrate(client, info.id)
        self._pools[name] = fn
        return fn

    @staticmethod
    def from_name(app_name: str, name: str, *, client: Client | None = None) -> DeployedCls:
        """A handle on the ``@app.cls()`` class ``name`` of the deployment ``app_name``:
        ``crucible.Cls.from_name("svc", "Model")().predict.remote(1.0)``. Any JSON
        parameters work (``Model(size="large")``): the exchange makes their pool from the
        deployed class the first time they are called."""
        for label, value in (("app_name", app_name), ("name", name)):
            if not isinstance(value, str) or not value.strip():
                raise InvalidRequestError(
                    f"Cls.from_name(): {label} must be a non-empty string, got {value!r}"
                )
        client = client or Client.from_settings()
        client.builder_only(f"Cls.from_name({app_name!r}, {name!r})", FROM_A_CONTAINER)
        default = Function.from_name(app_name, name, client=client)
        if default.kind != "class":
            raise InvalidRequestError(
                f"{app_name}.{name} is not an @app.cls() class (it is a "
                f"{default.kind.replace('_', ' ')}): use crucible.Function.from_name"
            )
        return DeployedCls(app_name, name, client, default)


class DeployedCls:
    """A deployed ``@app.cls()`` class looked up by name (:meth:`Cls.from_name`): call it
    with the class's parameters to get a handle whose methods run remotely."""

    def __init__(
        self, app_name: str, name: str, client: Client, default: Function[..., Any]
    ) -> None:
        self.app_name, self.name, self._client = app_name, name, client
        self.spec: ClassSpec | None = default.options.get("class_spec")
        # Unknown for a class deployed before its spec travelled: any name is sent as is.
        self.methods = self.spec.methods if self.spec is not None else None
        self.generators = set(self.spec.generators) if self.spec is not None else None
        default._through_cls = True
        self._pools: dict[str, Function[..., Any]] = {}
        if self.spec is None or self.spec.defaults() is not None:
            self._pools[name] = default

    def __repr__(self) -> str:
        return f"Cls.from_name({self.app_name!r}, {self.name!r})"

    def __call__(self, *args: Any, **params: Any) -> ClsInstance:
        if self.spec is None:
            if args or params:
                raise InvalidRequestError(
                    f"{self.app_name}.{self.name} was deployed by an earlier crucible, which "
                    f"serves only {self.name}(): deploy it again to call it with parameters"
                )
            return ClsInstance(self, {})
        return ClsInstance(self, _canonical(self.name, self.spec, args, params))

    def _function_for(self, params: dict[str, Any], method: str, how: str) -> Function[..., Any]:
        assert self.spec is not None or not params
        pool = self.name if self.spec is None else pool_name(self.name, self.spec, params)
        fn = self._pools.get(pool)
        if fn is None:
            # Made by the exchange from the deployed class (or found: made before).
            info = self._client.class_pool(self.app_name, self.name, params)
            fn = Function._from_info(self.app_name, info, self._client)
            fn._through_cls = True
            self._pools[pool] = fn
        return fn


class ClsInstance:
    def __init__(self, owner: Cls | DeployedCls, params: dict[str, Any]) -> None:
        self._owner = owner
        self._params = params

    def __getattr__(self, name: str) -> MethodHandle:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._owner.methods is not None and name not in self._owner.methods:
            raise AttributeError(
                f"{self._owner.name} has no @crucible.method() named {name!r}; it has "
                + ", ".join(self._owner.methods)
            )
        return MethodHandle(self._owner, self._params, name)


class MethodHandle:
    """``Model(...).predict``: ``.remote()``, ``.spawn()``, ``.map()`` and ``.local()``; a
    generator method streams with ``.remote_gen()``."""

    def __init__(self, owner: Cls | DeployedCls, params: dict[str, Any], name: str) -> None:
        self._owner, self._params, self._name = owner, params, name

    def _fn(self, how: str) -> Function[..., Any]:
        """The pool's function, to call the method with ``.{how}()``."""
        return self._owner._function_for(self._params, self._name, how)

    def _is_generator(self) -> bool | None:
        """Whether the method is a generator (None: not known, for a class deployed before
        its spec recorded its methods)."""
        generators = self._owner.generators
        return None if generators is None else self._name in generators

    def _not_generator(self, how: str) -> None:
        if self._is_generator():
            raise InvalidRequestError(
                f"{self._owner.name}.{self._name} is a generator: iterate over "
                f"{self._owner.name}().{self._name}.remote_gen(...) instead of .{how}()"
            )

    @aio
    def remote(self, *args: Any, **kwargs: Any) -> Any:
        self._not_generator("remote")
        return self._fn("remote").remote(self._name, *args, **kwargs)

    @aio
    def spawn(self, *args: Any, **kwargs: Any) -> FunctionCall[Any]:
        self._not_generator("spawn")
        return self._fn("spawn").spawn(self._name, *args, **kwargs)

    @aio_iter
    def remote_gen(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """Run a generator method in the class's container and iterate over what it yields,
        as it yields it, as :meth:`Function.remote_gen` does (leaving the loop early cancels
        the call). Refused at once for a method that is not a generator."""
        if self._is_generator() is False:
            raise InvalidRequestError(
                f"{self._owner.name}.{self._name} is not a generator: call it with .remote(), "
                ".spawn() or .map()"
            )
        return self._fn("remote_gen")._stream(self._name, *args, **kwargs)

    @aio_iter
    def map(
        self,
        *iterables: Iterable[Any],
        kwargs: dict[str, Any] | None = None,
        return_exceptions: bool = False,
        order_outputs: bool = True,
    ) -> Iterator[Any]:
        """Call the method once per element (zipped across ``iterables``), as
        :meth:`Function.map`: results in input order (as they finish with
        ``order_outputs=False``), ``kwargs`` passed to every call."""
        label = f"{self._owner.name}.{self._name}"
        if not iterables:
            raise InvalidRequestError(f"{label}.map() needs at least one iterable")
        _check_map_options(label, "map", kwargs, return_exceptions, order_outputs)
        self._not_generator("map")
        rows = zip(*iterables, strict=False)
        return self._map(rows, kwargs, return_exceptions, order_outputs, "map")

    @aio_iter
    def starmap(
        self,
        iterable: Iterable[Iterable[Any]],
        kwargs: dict[str, Any] | None = None,
        return_exceptions: bool = False,
        order_outputs: bool = True,
    ) -> Iterator[Any]:
        """Like :meth:`map` but each element is an argument tuple."""
        label = f"{self._owner.name}.{self._name}"
        _check_map_options(label, "starmap", kwargs, return_exceptions, order_outputs)
        self._not_generator("starmap")
        rows = (tuple(a) for a in iterable)
        return self._map(rows, kwargs, return_exceptions, order_outputs, "starmap")

    @aio
    def for_each(
        self,
        *iterables: Iterable[Any],
        kwargs: dict[str, Any] | None = None,
        ignore_exceptions: bool = False,
    ) -> None:
        """Call the method once per element and wait for every call, discarding the results
        (:meth:`Function.for_each`)."""
        label = f"{self._owner.name}.{self._name}"
        if not iterables:
            raise InvalidRequestError(f"{label}.for_each() needs at least one iterable")
        _check_map_options(label, "for_each", kwargs, ignore_exceptions, False)
        self._not_generator("for_each")
        rows = zip(*iterables, strict=False)
        for _ in self._map(rows, kwargs, ignore_exceptions, False, "for_each"):
            pass

    @aio
    def spawn_map(
        self, *iterables: Iterable[Any], kwargs: dict[str, Any] | None = None
    ) -> list[FunctionCall[Any]]:
        """Queue one call of the method per element and return at once, with a handle on
        each (:meth:`Function.spawn_map`)."""
        label = f"{self._owner.name}.{self._name}"
        if not iterables:
            raise InvalidRequestError(f"{label}.spawn_map() needs at least one iterable")
        self._not_generator("spawn_map")
        # The pool's calls name their method first: zipped, it ends with the shortest input.
        fn = self._fn("spawn_map")
        return fn.spawn_map(itertools.repeat(self._name), *iterables, kwargs=kwargs)

    def _map(
        self,
        rows: Iterator[tuple[Any, ...]],
        kwargs: dict[str, Any] | None,
        return_exceptions: bool,
        ordered: bool = True,
        how: str = "map",
    ) -> Iterator[Any]:
        return self._fn(how)._map(
            ((self._name, *row) for row in rows), kwargs or {}, return_exceptions, ordered, how
        )

    def local(self, *args: Any, **kwargs: Any) -> Any:
        """Make an instance here (running its enter hooks) and call the method."""
        if not isinstance(self._owner, Cls):
            raise Error(f"{self._owner!r} was looked up by name: its code is not here")
        instance = make_instance(self._owner.cls, self._params)
        return getattr(instance, self._name)(*args, **kwargs)


def make_instance(cls: type, params: dict[str, Any]) -> Any:
    """An instance with its ``@crucible.enter()`` methods run (in definition order)."""
    from crucible.sdk._hooks import _MARK as ENTER_MARK

    instance = cls(**params)
    for name, _ in _marked(cls, ENTER_MARK):
        getattr(instance, name)()
    return instance


def exit_hooks(instance: Any) -> list[Callable[[], Any]]:
    return [getattr(instance, name) for name, _ in _marked(type(instance), EXIT_MARK)]


def _marked(cls: type, mark: str) -> list[tuple[str, Any]]:
    found = [(n, v) for n, v in vars(cls).items() if getattr(v, mark, None)]
    return sorted(
        found, key=lambda nv: getattr(getattr(nv[1], "__code__", None), "co_firstlineno", 0)
    )


def _fmt(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items())
