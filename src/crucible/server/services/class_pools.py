"""Pools of a deployed ``@app.cls()`` class: one function per parameter set, made on demand.

A deploy registers one function named after the class, whose spec carries the class's
parameters (protocol/classes.py). A client calling ``Model(size="large")`` asks for the
pool of those parameters: the server makes them canonical (bound to the class's parameters,
defaults applied) and answers the function ``Model.p-<hash>`` of the deployment's current
version, made from the class's function the first time (same code, image, resources and
scaling; only its name and ``class_params`` differ). Nothing is unpickled: parameters are
JSON. At most ``max_pools`` parameter sets per class and version, so a caller cannot make
functions without bound.

A pool belongs to the version it was made in. After a redeploy, a call to a pool of the old
version is forwarded to the same parameters' pool of the new one, made then if needed
(services/deployments.forward_call_target).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select

from crucible.errors import InvalidRequestError, QuotaExceededError
from crucible.protocol.apps import function_kind
from crucible.protocol.classes import canonical_params, pool_name
from crucible.protocol.ids import new_id
from crucible.server.auth import Principal
from crucible.server.services.apps import FunctionRow, get_function_row
from crucible.server.store.bulk import InsertSkipping
from crucible.server.store.locks import lock_row
from crucible.server.store.tables import functions

__all__ = ["class_pool", "pool_of_class"]

_INSERT_FUNCTION = InsertSkipping(functions, "app_id", "name")


def class_pool(
    conn: Connection,
    principal: Principal,
    cls: FunctionRow,
    params: dict[str, Any],
    now_ms: int,
    *,
    max_pools: int,
) -> FunctionRow:
    """The pool of ``params`` of the class whose deployed function is ``cls``, made at the
    first ask. Two asks at once get the same function. ``principal`` found ``cls`` (it may
    call the deployment)."""
    spec = cls.spec
    of_class = pool_of_class(cls)
    if of_class is not None:  # a pool's pools would escape the class's cap
        raise InvalidRequestError(
            f"{cls.name} is a pool of the class {of_class[0]}: ask the class for the pool of "
            f"these parameters (POST .../functions/{of_class[0]}/pools)"
        )
    if spec.class_params is None:
        raise InvalidRequestError(
            f"{cls.name} is not an @app.cls() class (it is a "
            f"{function_kind(cls.spec).replace('_', ' ')}): call it with "
            "crucible.Function.from_name"
        )
    if spec.class_spec is None:
        raise InvalidRequestError(
            f"{cls.name} was deployed by an earlier crucible, which serves only {cls.name}(): "
            "deploy it again to call it with parameters"
        )
    canonical = canonical_params(spec.class_spec, cls.name, params)
    name = pool_name(cls.name, spec.class_spec, canonical)
    if name == cls.name:
        return cls  # the default parameters: the class's own function
    found = _function_id(conn, cls.app_id, name)
    if found is not None:
        return get_function_row(conn, principal, found)
    # One maker at a time per class: the count below stays true until this one commits.
    lock_row(conn, functions, functions.c.id, cls.id)
    made = conn.execute(
        select(func.count())
        .select_from(functions)
        .where(
            functions.c.app_id == cls.app_id,
            functions.c.name.startswith(f"{cls.name}.p-", autoescape=True),
        )
    ).scalar()
    if int(made or 0) >= max_pools:
        raise QuotaExceededError(
            f"{cls.name} serves {made} parameter sets already, the most a deployed class may "
            f"(CRUCIBLE_MAX_CLASS_POOLS={max_pools}); reuse parameters, or deploy again to "
            "start over"
        )
    pool = spec.model_copy(update={"name": name, "class_params": canonical})
    conn.execute(
        _INSERT_FUNCTION.on(conn),
        {
            "id": new_id("fn"),
            "account_id": cls.account_id,
            "app_id": cls.app_id,
            "name": name,
            "spec": pool.model_dump(mode="json"),
            "warm": pool.keeps_warm(),
            "created_ms": now_ms,
        },
    )
    made_id = _function_id(conn, cls.app_id, name)
    assert made_id is not None  # inserted, or inserted by another ask at once
    return get_function_row(conn, principal, made_id)


def pool_of_class(fn: FunctionRow) -> tuple[str, dict[str, Any]] | None:
    """For a class's pool (``Model.p-...``): its class's name and canonical parameters."""
    cls_name, sep, _ = fn.name.rpartition(".p-")
    if not sep or fn.spec.class_params is None or fn.spec.class_spec is None:
        return None
    return cls_name, dict(fn.spec.class_params)


def _function_id(conn: Connection, app_id: str, name: str) -> str | None:
    found = conn.execute(
        select(functions.c.id).where(functions.c.app_id == app_id, functions.c.name == name)
    ).scalar()
    return None if found is None else str(found)
