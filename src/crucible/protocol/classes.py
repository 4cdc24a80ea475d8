"""An ``@app.cls()`` class on the wire: what a client needs to name the pool of a parameter
set (``Model(size="large")``) without the class's code, and the rule both sides apply.

Each parameter set of a class is a pool of containers: a function named after the class
(the default parameters) or ``Class.p-<hash of the parameters>``. The parameters are
canonical first: bound to the class's signature with its defaults applied, so ``Model()``
and ``Model(size="small")`` are one pool when ``small`` is the default. The SDK applies the
rule in an ephemeral run, and the server when a client asks a deployment for a pool
(``POST /v1/deployments/{name}/functions/{class}/pools``): the same function on both sides.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from pydantic import Field

from crucible.errors import InvalidRequestError
from crucible.protocol.common import JsonValue, Wire

__all__ = [
    "MAX_PARAMS_BYTES",
    "ClassParam",
    "ClassPoolCreate",
    "ClassSpec",
    "canonical_params",
    "pool_name",
]

_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


class ClassParam(Wire):
    """A parameter of the class's ``__init__``. ``required``: it has no default. A default
    that JSON cannot carry (a tuple, an object) is not sent (``default_in_code``): the
    container applies it, and the parameter is left out of the canonical set when not given."""

    name: str = Field(pattern=_IDENTIFIER)
    required: bool = False
    default: JsonValue = None
    default_in_code: bool = False


class ClassSpec(Wire):
    """A class's parameters and methods, carried in the spec of each of its pools."""

    params: list[ClassParam] = Field(default_factory=list, max_length=256)
    # The class takes **kwargs: names beyond ``params`` are accepted as given.
    any_params: bool = False
    methods: list[str] = Field(default_factory=list, max_length=1000)
    # Methods that are generators: their calls stream what they yield (.remote_gen()).
    generators: list[str] = Field(default_factory=list, max_length=1000)

    def defaults(self) -> dict[str, Any] | None:
        """The canonical parameters of ``Class()``; None when a parameter is required."""
        if any(p.required for p in self.params):
            return None
        return {p.name: p.default for p in self.params if not p.default_in_code}


class ClassPoolCreate(Wire):
    """``POST /v1/deployments/{name}/functions/{class}/pools``: the pool of these parameters
    (as the builder passed them; the server makes them canonical)."""

    params: dict[str, JsonValue] = Field(default_factory=dict, max_length=256)


# A parameter set is stored with each pool's spec: small values (sizes, names, flags), not data.
MAX_PARAMS_BYTES = 64 * 1024


def canonical_params(spec: ClassSpec, cls_name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` bound to the class's parameters with its defaults applied, in the class's
    order. Raises InvalidRequestError naming unknown and missing parameters."""
    known = {p.name for p in spec.params}
    unknown = [k for k in params if k not in known]
    if unknown and not spec.any_params:
        takes = ", ".join(p.name for p in spec.params) or "no parameters"
        raise InvalidRequestError(
            f"{cls_name}() got unexpected parameter(s) {_names(unknown)}; it takes {takes}"
        )
    missing = [p.name for p in spec.params if p.required and p.name not in params]
    if missing:
        raise InvalidRequestError(
            f"{cls_name}() is missing required parameter(s) {_names(missing)}: pass them by "
            f"name, {cls_name}({missing[0]}=...)"
        )
    out: dict[str, Any] = {}
    for p in spec.params:
        if p.name in params:
            out[p.name] = params[p.name]
        elif not p.default_in_code:
            out[p.name] = p.default
    for k in unknown:
        out[k] = params[k]
    size = len(orjson.dumps(out))
    if size > MAX_PARAMS_BYTES:
        raise InvalidRequestError(
            f"{cls_name}()'s parameters are {size:,} bytes as JSON; at most "
            f"{MAX_PARAMS_BYTES:,}: pass large data to a method, or through a volume or a Dict"
        )
    return out


def pool_name(cls_name: str, spec: ClassSpec, canonical: dict[str, Any]) -> str:
    """The function name of a canonical parameter set's pool: the class's name for its
    default parameters, else the class's name and a hash of the parameters."""
    # Compared as JSON: 1, 1.0 and True are equal in Python but are different parameters.
    text = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
    defaults = spec.defaults()
    if defaults is not None and text == orjson.dumps(defaults, option=orjson.OPT_SORT_KEYS):
        return cls_name
    return f"{cls_name}.p-{hashlib.sha256(text).hexdigest()[:12]}"


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names)
