"""A function's spec, read once per version into one typed object.

``functions.spec`` is stored as JSON (protocol.apps.FunctionCreate) and every write of it
bumps ``functions.spec_rev``. :class:`SpecCache` keeps the :class:`FunctionSpec` parsed for
each (function id, spec_rev): a reader selects the small ``spec_rev`` column with its rows,
and only a function it has not seen at that version costs a read and a validation of the
JSON. A redeploy that rewrites a function's spec moves its version, so a cached spec is never
served after the spec changed, in this process or any other replica.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

import orjson
from pydantic import ValidationError
from sqlalchemy import Connection, select

from crucible.errors import InternalError, NotFoundError
from crucible.protocol.apps import FunctionCreate
from crucible.protocol.common import read_tolerant
from crucible.server.services.market import MarketTerms
from crucible.server.store.tables import functions

__all__ = ["SPECS", "FunctionSpec", "SpecCache", "unparsed_blob_refs"]

log = logging.getLogger("crucible.specs")

_SHA = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class FunctionSpec:
    """One version of a function's spec, validated, with what is derived from it."""

    id: str
    rev: int
    spec: FunctionCreate
    terms: MarketTerms  # how it buys GPUs (its market part, its network egress)
    pod: bool  # a pod's function (the pod supervisor), named a pod in reasons

    @cached_property
    def blob_refs(self) -> frozenset[str]:
        """Every sha256 the spec names (its code bundle, its image's files, ...): blobs that
        retention must keep. Any 64-hex string counts, so a field added later is covered."""
        return frozenset(_SHA.findall(self.spec.model_dump_json()))

    @classmethod
    def parse(cls, function_id: str, rev: int, raw: object) -> FunctionSpec:
        # Imported here: pods -> containers -> calls read specs through this module.
        from crucible.server.services.pods import is_pod_function

        # Tolerant: a newer replica may have stored a field this version does not know.
        spec = read_tolerant(FunctionCreate, raw)
        return cls(
            id=function_id,
            rev=rev,
            spec=spec,
            terms=MarketTerms.of(spec.market, network=bool(spec.network)),
            pod=is_pod_function(spec),
        )


def unparsed_blob_refs(conn: Connection, function_ids: list[str]) -> set[str]:
    """Every sha256 the stored specs of ``function_ids`` name, read from their JSON without
    parsing it: for specs this version cannot read (their blobs are kept all the same)."""
    found: set[str] = set()
    for chunk in _chunks(function_ids, 500):
        for raw in conn.execute(select(functions.c.spec).where(functions.c.id.in_(chunk))):
            found.update(_SHA.findall(orjson.dumps(raw.spec).decode()))
    return found


class SpecCache:
    """Parsed specs by (function id, spec_rev), the least recently used dropped past
    ``max_entries``. Thread-safe: the scheduler's thread and API handlers share it."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._specs: OrderedDict[str, FunctionSpec] = OrderedDict()
        self._lock = threading.Lock()
        self.parsed = 0  # specs read and validated since start (a measure of misses)
        # Functions whose stored spec this version cannot read, at the revision that failed
        # (logged once each): left out of get_many, so one bad row stops nobody else's work.
        self.unreadable: dict[str, int] = {}

    def cached(self, function_id: str, rev: int) -> FunctionSpec | None:
        with self._lock:
            hit = self._specs.get(function_id)
            if hit is None or hit.rev != rev:
                return None
            self._specs.move_to_end(function_id)
            return hit

    def put(self, spec: FunctionSpec) -> FunctionSpec:
        with self._lock:
            self._specs[spec.id] = spec
            self._specs.move_to_end(spec.id)
            while len(self._specs) > self.max_entries:
                self._specs.popitem(last=False)
            self.parsed += 1
        return spec

    def of_row(self, function_id: str, rev: int, raw: object) -> FunctionSpec:
        """The spec of a row that was read with its JSON (parsed only if not cached)."""
        hit = self.cached(function_id, rev)
        return hit if hit is not None else self.put(FunctionSpec.parse(function_id, rev, raw))

    def get_many(self, conn: Connection, revs: dict[str, int]) -> dict[str, FunctionSpec]:
        """The specs of functions whose current versions are ``revs`` (id -> spec_rev, as
        selected with the caller's rows): the JSON of those not cached at that version is read
        in one query. A function deleted meanwhile is left out."""
        out: dict[str, FunctionSpec] = {}
        missing: list[str] = []
        for fid, rev in revs.items():
            hit = self.cached(fid, rev)
            if hit is None:
                missing.append(fid)
            else:
                out[fid] = hit
        for chunk in _chunks(missing, 500):
            for r in conn.execute(
                select(functions.c.id, functions.c.spec_rev, functions.c.spec).where(
                    functions.c.id.in_(chunk)
                )
            ):
                # The row as read now: a newer version than the caller saw is the truth.
                try:
                    spec = FunctionSpec.parse(r.id, r.spec_rev, r.spec)
                except ValidationError as exc:
                    self._unreadable(r.id, r.spec_rev, exc)
                    continue
                out[r.id] = self.put(spec)
        return out

    def _unreadable(self, function_id: str, rev: int, exc: ValidationError) -> None:
        with self._lock:
            if self.unreadable.get(function_id) == rev:
                return
            self.unreadable[function_id] = rev
        log.error(
            "function %s: its stored spec (revision %d) cannot be read by this version, so it "
            "is left out (scheduling, retention) until it can: was it written by a newer one? "
            "Upgrade every replica. %s",
            function_id,
            rev,
            str(exc).splitlines()[0:3],
        )

    def at(self, conn: Connection, function_id: str, rev: int) -> FunctionSpec:
        """The spec of one function whose version ``rev`` was selected with the caller's row
        (read from the store only if not cached at that version). NotFound when the function
        was deleted meanwhile."""
        hit = self.cached(function_id, rev)
        if hit is not None:
            return hit
        found = self.get_many(conn, {function_id: rev}).get(function_id)
        if found is None:
            if function_id in self.unreadable:
                raise InternalError(
                    f"function {function_id}'s stored spec cannot be read by this server's "
                    "version (written by a newer one?); the operator's log says more"
                )
            raise NotFoundError(f"function {function_id} not found")
        return found

    def get(self, conn: Connection, function_id: str) -> FunctionSpec | None:
        """One function's current spec (its version read from the store), or None."""
        rev = conn.execute(
            select(functions.c.spec_rev).where(functions.c.id == function_id)
        ).scalar()
        if rev is None:
            return None
        return self.get_many(conn, {function_id: int(rev)}).get(function_id)

    def clear(self) -> None:
        with self._lock:
            self._specs.clear()


def _chunks(ids: list[str], n: int) -> Iterable[list[str]]:
    for i in range(0, len(ids), n):
        yield ids[i : i + n]


# The process's one cache (keys are globally unique function ids with their version).
SPECS = SpecCache()
