"""Model deployments: the registry of models (a deployment whose web function speaks the
OpenAI protocol), their LoRA adapters, who may call them, and their token usage.

A model belongs to one account. Its owner calls it as ``NAME`` (or ``NAME:ADAPTER``); other
accounts see it only when the owner made it public, as ``OWNER/NAME[:ADAPTER]``. Usage is
recorded per (model, caller, adapter, UTC day); a caller other than the owner is charged per
token through the ledger at the model's prices (:mod:`crucible.core.token_pricing`), the
owner credited less the platform fee. The owner's own requests are recorded but not charged
per token: the owner already pays the deployment's container time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from crucible.core import token_bounds
from crucible.core.ledger import MS_PER_DAY, EntryKind
from crucible.core.token_bounds import BoundRefusal, Endpoint, RequestBounds
from crucible.core.token_pricing import (
    TokenPrices,
    TokenUsage,
    token_charge_micros,
    token_postings,
)
from crucible.errors import InvalidRequestError, NotFoundError
from crucible.protocol.billing import TokenBillLine
from crucible.protocol.ids import new_id
from crucible.protocol.models import (
    ENGINES,
    AdapterCreate,
    AdapterInfo,
    ModelCreate,
    ModelInfo,
    ModelUsage,
    ModelUsageLine,
    check_not_base,
)
from crucible.server.auth import Principal
from crucible.server.billing.entries import EntryContext, post_entry
from crucible.server.billing.holds import release_hold
from crucible.server.billing.period import Period
from crucible.server.services.deployments import current_function, stop_deployment
from crucible.server.services.fine_tunes import succeeded_adapter
from crucible.server.store.tables import (
    accounts,
    apps,
    deployments,
    meter_intervals,
    model_adapters,
    model_usage,
    models,
)

__all__ = [
    "Resolved",
    "TokenBoundError",
    "account_name",
    "add_adapter",
    "get_model",
    "list_models",
    "model_usage_report",
    "prices_of",
    "record_usage",
    "register_model",
    "request_bounds",
    "resolve",
    "stop_model",
    "token_bill",
]


# Adapters one model may register: every one is listed by GET /openai/v1/models and read on
# each request naming it; far beyond what one base model's engine keeps loaded at once.
MAX_ADAPTERS_PER_MODEL = 1000


def account_name(conn: Connection, account_id: str) -> str:
    name = conn.execute(select(accounts.c.name).where(accounts.c.id == account_id)).scalar()
    return str(name or account_id)


def _owned(conn: Connection, principal: Principal, name: str) -> Any:
    row = conn.execute(
        select(models).where(models.c.account_id == principal.account_id, models.c.name == name)
    ).first()
    if row is None:
        raise NotFoundError(
            f"no model named {name!r}; deploy one with `crucible model deploy {name} --weights ...`"
        )
    return row


def register_model(
    conn: Connection, principal: Principal, req: ModelCreate, now_ms: int
) -> ModelInfo:
    """Register the model ``req.name`` (or update it: a redeploy keeps its adapters and
    usage, and its prices and visibility unless the request sets them). The deployment must
    be the caller's, running, with a web function ``req.function`` of kind ``asgi_app``."""
    fn = current_function(conn, principal, req.deployment, req.function)
    web = fn.spec.web or {}
    if web.get("kind") != "asgi_app":
        raise InvalidRequestError(
            f"{req.deployment}.{req.function} is not an @crucible.asgi_app() web function; a "
            "model is served by one (crucible model deploy makes it)"
        )
    dep_id = conn.execute(select(apps.c.deployment_id).where(apps.c.id == fn.app_id)).scalar()
    values = {
        "deployment_id": dep_id,
        "function": req.function,
        "engine": req.engine,
        "weights": req.weights,
        "public": req.public,
        "price_input_micros": req.price_input_micros,
        "price_output_micros": req.price_output_micros,
        "context_length": req.context_length,
        "max_lora_rank": req.max_lora_rank,
        "updated_ms": now_ms,
    }
    existing = conn.execute(
        select(models.c.id).where(
            models.c.account_id == principal.account_id, models.c.name == req.name
        )
    ).scalar()
    if existing is None:
        conn.execute(
            models.insert().values(
                id=new_id("md"),
                account_id=principal.account_id,
                name=req.name,
                charged_micros=0,
                created_ms=now_ms,
                **values,
            )
        )
    else:
        # What callers pay and whether they may call it change only when the request says
        # so: a redeploy that leaves them out keeps them (a new model: private, no prices).
        for kept in _KEPT_UNLESS_SET - req.model_fields_set:
            del values[kept]
        conn.execute(update(models).where(models.c.id == existing).values(**values))
    return get_model(conn, principal, req.name)


_KEPT_UNLESS_SET = frozenset({"public", "price_input_micros", "price_output_micros"})


def _info(conn: Connection, row: Any) -> ModelInfo:
    dep = conn.execute(
        select(deployments.c.name, deployments.c.state).where(deployments.c.id == row.deployment_id)
    ).first()
    owner = conn.execute(select(accounts.c.name).where(accounts.c.id == row.account_id)).scalar()
    adapters = [
        AdapterInfo(name=a.name, path=a.path, source=a.source, created_ms=a.created_ms)
        for a in conn.execute(
            select(model_adapters)
            .where(model_adapters.c.model_id == row.id)
            .order_by(model_adapters.c.name)
        )
    ]
    return ModelInfo(
        id=row.id,
        name=row.name,
        owner=str(owner),
        deployment=dep.name if dep else "?",
        function=row.function,
        engine=row.engine,
        weights=row.weights,
        public=bool(row.public),
        state=dep.state if dep else "stopped",
        price_input_micros=row.price_input_micros,
        price_output_micros=row.price_output_micros,
        created_ms=row.created_ms,
        context_length=row.context_length,
        max_lora_rank=row.max_lora_rank,
        adapters=adapters,
    )


def get_model(conn: Connection, principal: Principal, name: str) -> ModelInfo:
    return _info(conn, _owned(conn, principal, name))


def list_models(conn: Connection, principal: Principal, *, public: bool = False) -> list[ModelInfo]:
    """The caller's models, by name; with ``public``, then other accounts' public ones that
    run (a stopped one answers nobody: its owner still sees it)."""
    q = select(models).where(models.c.account_id == principal.account_id)
    if public:
        q = select(models).where(
            (models.c.account_id == principal.account_id) | models.c.public.is_(True)
        )
    rows = conn.execute(q.order_by(models.c.account_id != principal.account_id, models.c.name))
    infos = [(r.account_id, _info(conn, r)) for r in rows]
    return [i for owner, i in infos if owner == principal.account_id or i.state == "running"]


def stop_model(conn: Connection, principal: Principal, name: str, now_ms: int) -> ModelInfo:
    """Stop the model's deployment (its containers stop; requests get 404 until it is
    deployed again). Its adapters and usage are kept."""
    row = _owned(conn, principal, name)
    dep = conn.execute(select(deployments.c.name).where(deployments.c.id == row.deployment_id))
    stop_deployment(conn, principal, str(dep.scalar()), now_ms)
    return _info(conn, row)


def add_adapter(
    conn: Connection,
    principal: Principal,
    model: str,
    req: AdapterCreate,
    now_ms: int,
    *,
    capped: bool = True,
) -> ModelInfo:
    """Register (or re-point) an adapter; it serves at once as ``MODEL:ADAPTER``: the
    model's containers load it on its first request. A new name past
    :data:`MAX_ADAPTERS_PER_MODEL` is refused unless ``capped`` is False (a fine-tune that
    succeeded registers what it trained: one per call, which the account paid for)."""
    row = _owned(conn, principal, model)
    check_not_base(row.name, req.name)
    if req.rank is not None and row.engine in ENGINES and req.rank > row.max_lora_rank:
        raise InvalidRequestError(
            f"adapter {req.name!r} has rank {req.rank}, over the largest rank model {model!r} "
            f"serves ({row.max_lora_rank}): use a smaller rank, or redeploy the model with "
            f"`crucible model deploy {model} ... --max-lora-rank {req.rank}`"
        )
    names = set(
        conn.execute(
            select(model_adapters.c.name).where(model_adapters.c.model_id == row.id)
        ).scalars()
    )
    if capped and req.name not in names and len(names) >= MAX_ADAPTERS_PER_MODEL:
        raise InvalidRequestError(
            f"model {model!r} already has {len(names)} adapters, the most allowed; re-point an "
            "existing one (`crucible model adapter add` with its name) or serve the others "
            "from another model"
        )
    values = {"path": req.path, "source": req.source or req.path, "created_ms": now_ms}
    ins = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    conn.execute(
        ins(model_adapters)
        .values(model_id=row.id, name=req.name, **values)
        .on_conflict_do_update(index_elements=["model_id", "name"], set_=values)
    )
    return _info(conn, row)


@dataclass(frozen=True)
class Resolved:
    """What an OpenAI request's ``model`` names: the model row, its owner as a principal
    (calls run as the owner's), the function row that serves it, and the adapter (None
    for the base model)."""

    model: Any
    owner: Principal
    function: Any
    adapter: AdapterInfo | None
    label: str  # the name the caller used, e.g. "alice/chat:sql"


def resolve(conn: Connection, caller: Principal, name: str) -> Resolved:
    """``NAME``, ``NAME:ADAPTER``, ``OWNER/NAME`` or ``OWNER/NAME:ADAPTER``. Another
    account's model is found only when public; otherwise the answer is the same "no such
    model" as for a name that does not exist."""
    base, colon, adapter_name = name.partition(":")
    owner_name, slash, model_name = base.rpartition("/")
    missing = NotFoundError(
        f"The model '{name}' does not exist or you do not have access to it; list yours "
        "with GET /openai/v1/models (or `crucible model list`)"
    )
    if colon and not adapter_name:  # "chat:" names no adapter, and is not the base model
        raise missing
    q = select(models).where(models.c.name == (model_name if slash else base))
    if slash:
        q = q.join(accounts, accounts.c.id == models.c.account_id).where(
            accounts.c.name == owner_name
        )
    else:
        q = q.where(models.c.account_id == caller.account_id)
    row = conn.execute(q).first()
    if row is None or (row.account_id != caller.account_id and not row.public):
        raise missing
    owner = Principal(account_id=row.account_id, scope="user")
    adapter = None
    if adapter_name:
        a = conn.execute(
            select(model_adapters).where(
                model_adapters.c.model_id == row.id, model_adapters.c.name == adapter_name
            )
        ).first()
        if a is not None:
            adapter = AdapterInfo(
                name=a.name, path=a.path, source=a.source, created_ms=a.created_ms
            )
        else:  # a fine-tune that has just succeeded serves before it is registered
            trained = succeeded_adapter(conn, row.id, adapter_name)
            if trained is None:
                raise missing
            adapter = AdapterInfo(
                name=adapter_name, path=trained, source="fine-tune", created_ms=row.created_ms
            )
    dep = conn.execute(
        select(deployments.c.name).where(deployments.c.id == row.deployment_id)
    ).scalar()
    try:
        fn = current_function(conn, owner, str(dep), row.function)
    except NotFoundError:
        raise NotFoundError(
            f"The model '{name}' is not being served (its deployment is stopped); its owner "
            "deploys it again with `crucible model deploy`"
        ) from None
    return Resolved(model=row, owner=owner, function=fn, adapter=adapter, label=name)


def _day(ms: int) -> int:
    return ms // MS_PER_DAY


def request_bounds(resolved: Resolved, path: str, body: dict[str, Any]) -> RequestBounds:
    """The most ``body`` may be charged for on this model (core/token_bounds); a request no
    engine should be asked (``max_tokens`` past the context, ``n`` out of range, ...) raises
    :class:`TokenBoundError`."""
    endpoint: Endpoint = (
        "embeddings"
        if path.endswith("/embeddings")
        else "completions"
        if path.endswith("/v1/completions")
        else "chat"
    )
    bounds = token_bounds.request_bounds(endpoint, body, int(resolved.model.context_length))
    if isinstance(bounds, BoundRefusal):
        raise TokenBoundError(bounds)
    return bounds


class TokenBoundError(InvalidRequestError):
    """A request refused by :func:`request_bounds`; ``refusal`` has its OpenAI ``param`` and
    ``code``."""

    def __init__(self, refusal: BoundRefusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def prices_of(resolved: Resolved) -> TokenPrices:
    m = resolved.model
    return TokenPrices(int(m.price_input_micros or 0), int(m.price_output_micros or 0))


def record_usage(
    conn: Connection,
    resolved: Resolved,
    caller: Principal,
    usage: TokenUsage,
    request_id: str,
    now_ms: int,
    fee_ppm: int,
    hold: str | None = None,
) -> int:
    """Record one request's tokens and charge them; returns the micro-dollars charged.
    Idempotent per ``request_id`` for the ledger (its key is ``tokens:<request_id>``). The
    request's ``hold`` (billing/holds), if any, is released in the same transaction."""
    m = resolved.model
    prices = prices_of(resolved)
    if hold is not None:
        release_hold(conn, hold)
    own = caller.account_id == m.account_id
    value = 0 if own else usage.value_units(prices)
    adapter = resolved.adapter.name if resolved.adapter else ""
    key = {"model_id": m.id, "account_id": caller.account_id, "adapter": adapter}
    ins = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    # One atomic upsert adds the request; the running value after it gives the charge.
    after = conn.execute(
        ins(model_usage)
        .values(
            **key,
            day=_day(now_ms),
            requests=1,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            value_units=value,
            cost_micros=0,
        )
        .on_conflict_do_update(
            index_elements=["model_id", "account_id", "adapter", "day"],
            set_={
                "requests": model_usage.c.requests + 1,
                "input_tokens": model_usage.c.input_tokens + usage.input_tokens,
                "output_tokens": model_usage.c.output_tokens + usage.output_tokens,
                "value_units": model_usage.c.value_units + value,
            },
        )
        .returning(model_usage.c.value_units)
    ).scalar_one()
    cost = token_charge_micros(int(after) - value, value)
    if cost <= 0:
        return 0
    conn.execute(
        update(model_usage)
        .where(
            model_usage.c.model_id == m.id,
            model_usage.c.account_id == caller.account_id,
            model_usage.c.adapter == adapter,
            model_usage.c.day == _day(now_ms),
        )
        .values(cost_micros=model_usage.c.cost_micros + cost)
    )
    charged = conn.execute(
        update(models)
        .where(models.c.id == m.id)
        .values(charged_micros=models.c.charged_micros + cost)
        .returning(models.c.charged_micros)
    ).scalar_one()
    post_entry(
        conn,
        f"tokens:{request_id}",
        EntryKind.CHARGE,
        now_ms,
        token_postings(caller.account_id, m.account_id, cost, int(charged) - cost, fee_ppm),
        memo=f"model {resolved.label}: {usage.input_tokens} input + "
        f"{usage.output_tokens} output tokens",
        context=EntryContext(
            renter=caller.account_id,
            app_id=resolved.function.app_id,
            function_id=resolved.function.id,
            meter=f"model:{m.id}",
            start_ms=now_ms,
            end_ms=now_ms,
            cost_micros=cost,
        ),
    )
    return cost


def _day_str(day: int) -> str:
    return dt.datetime.fromtimestamp(day * 86_400, dt.UTC).strftime("%Y-%m-%d")


def model_usage_report(conn: Connection, principal: Principal, name: str) -> ModelUsage:
    """Tokens per caller, adapter and day (the owner's view), and the deployment's
    metered container cost."""
    row = _owned(conn, principal, name)
    lines = [
        ModelUsageLine(
            day=_day_str(r.day),
            caller=str(r.caller or r.account_id),
            adapter=r.adapter,
            requests=r.requests,
            input_tokens=r.input_tokens,
            output_tokens=r.output_tokens,
            cost_micros=r.cost_micros,
        )
        for r in conn.execute(
            select(model_usage, accounts.c.name.label("caller"))
            .outerjoin(accounts, accounts.c.id == model_usage.c.account_id)
            .where(model_usage.c.model_id == row.id)
            .order_by(model_usage.c.day, accounts.c.name, model_usage.c.adapter)
        )
    ]
    container_cost = conn.execute(
        select(func.coalesce(func.sum(meter_intervals.c.cost_micros), 0))
        .join(apps, apps.c.id == meter_intervals.c.app_id)
        .where(apps.c.deployment_id == row.deployment_id)
    ).scalar()
    return ModelUsage(
        model=row.name,
        lines=lines,
        requests=sum(line.requests for line in lines),
        input_tokens=sum(line.input_tokens for line in lines),
        output_tokens=sum(line.output_tokens for line in lines),
        cost_micros=sum(line.cost_micros for line in lines),
        container_cost_micros=int(container_cost or 0),
    )


def token_bill(
    conn: Connection, principal: Principal, period: Period = Period()
) -> list[TokenBillLine]:
    """Per model: the tokens this account used (and was charged for) as a caller, and what
    other callers were charged on its own models (earned, before the platform fee), on the
    days ``period`` touches."""
    out: dict[str, dict[str, int]] = {}

    def line(label: str) -> dict[str, int]:
        return out.setdefault(
            label, {"requests": 0, "input": 0, "output": 0, "cost": 0, "earned": 0}
        )

    sums = (
        func.sum(model_usage.c.requests).label("requests"),
        func.sum(model_usage.c.input_tokens).label("i"),
        func.sum(model_usage.c.output_tokens).label("o"),
        func.sum(model_usage.c.cost_micros).label("c"),
    )
    for r in conn.execute(
        select(accounts.c.name.label("owner"), models.c.name, *sums)
        .join(models, models.c.id == model_usage.c.model_id)
        .join(accounts, accounts.c.id == models.c.account_id)
        .where(model_usage.c.account_id == principal.account_id, *period.days(model_usage.c.day))
        .group_by(accounts.c.name, models.c.name)
    ):
        mine = line(f"{r.owner}/{r.name}")
        mine["requests"] += int(r.requests or 0)
        mine["input"] += int(r.i or 0)
        mine["output"] += int(r.o or 0)
        mine["cost"] += int(r.c or 0)
    for r in conn.execute(
        select(accounts.c.name.label("owner"), models.c.name, *sums)
        .join(models, models.c.id == model_usage.c.model_id)
        .join(accounts, accounts.c.id == models.c.account_id)
        .where(
            models.c.account_id == principal.account_id,
            model_usage.c.account_id != principal.account_id,
            *period.days(model_usage.c.day),
        )
        .group_by(accounts.c.name, models.c.name)
    ):
        line(f"{r.owner}/{r.name}")["earned"] += int(r.c or 0)
    return [
        TokenBillLine(
            model=label,
            requests=v["requests"],
            input_tokens=v["input"],
            output_tokens=v["output"],
            cost_micros=v["cost"],
            earned_micros=v["earned"],
        )
        for label, v in sorted(out.items())
    ]
