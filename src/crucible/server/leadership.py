"""One scheduler leader among the replicas of a store, elected through the store itself.

The ``leadership`` table holds one lease row per role (today only ``scheduler``): its holder,
when the lease expires, and an ``epoch`` that grows by one every time the holder changes. A
replica whose lease lapsed is replaced by whichever replica claims first; the new holder's
epoch is the old one plus one.

The epoch is the fence. Every transaction the leader writes in starts with :func:`fence`,
which reads the row ``FOR SHARE`` (PostgreSQL) and raises :class:`Deposed` unless the epoch is
still the one this replica was given. A takeover updates that row, so it waits for the old
leader's open transactions to end, and every transaction the old leader begins afterwards
sees the new epoch and is rolled back: a deposed leader (paused by a long GC, a stalled disk,
a partition) can never commit a scheduler write after its successor started.

On SQLite (one process, ``crucible up``) the same code runs: the only replica always holds
the lease, and a second server on the same home is refused before it gets here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Protocol

from sqlalchemy import Connection, Engine, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from crucible.server.store.tables import leadership, replicas

__all__ = [
    "SCHEDULER",
    "Deposed",
    "Elector",
    "check_in",
    "claim",
    "fence",
    "leader_url",
    "new_replica_id",
    "others_alive",
]

# A replica's row not renewed for this long is forgotten (it is long dead).
_FORGET_MS = 3_600_000
# Held by a server while it checks its settings against the running replicas'.
_STARTING_LOCK = 0x6372_7563_7374_7274  # "crucstrt"

log = logging.getLogger("crucible.leadership")

SCHEDULER = "scheduler"


class Deposed(Exception):
    """This replica's epoch is no longer the leader's: the transaction must not commit.

    Never reaches a client: it ends one scheduler transaction (rolled back) and the
    scheduler itself, until this replica is elected again."""


def new_replica_id() -> str:
    """A name for this process as a lease holder: unique per start, so a restarted replica
    never mistakes its predecessor's lease for its own."""
    return f"r-{uuid.uuid4().hex[:12]}"


def claim(
    conn: Connection,
    holder: str,
    now_ms: int,
    lease_ms: int,
    role: str = SCHEDULER,
    *,
    url: str = "",
) -> int | None:
    """Renew ``holder``'s lease on ``role``, or take it when the current one lapsed (or none
    exists); returns the epoch ``holder`` now leads with, or None when another replica holds
    a live lease. Run it in a transaction of its own."""
    row = conn.execute(
        select(leadership.c.epoch, leadership.c.holder, leadership.c.expires_ms)
        .where(leadership.c.name == role)
        .with_for_update()
    ).first()
    expires = now_ms + lease_ms
    if row is None:
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(leadership).values(
                        name=role, epoch=1, holder=holder, expires_ms=expires, url=url
                    )
                )
        except IntegrityError:
            return None  # another replica made the row first; it leads
        return 1
    if row.holder == holder:
        conn.execute(
            update(leadership).where(leadership.c.name == role).values(expires_ms=expires, url=url)
        )
        return int(row.epoch)
    if row.expires_ms >= now_ms:
        return None
    epoch = int(row.epoch) + 1
    conn.execute(
        update(leadership)
        .where(leadership.c.name == role, leadership.c.epoch == row.epoch)
        .values(epoch=epoch, holder=holder, expires_ms=expires, url=url)
    )
    return epoch


def fence(conn: Connection, epoch: int, role: str = SCHEDULER) -> None:
    """Raise :class:`Deposed` unless ``epoch`` still leads ``role``. Call it first in every
    transaction the leader writes in: on PostgreSQL the row stays share-locked until the
    transaction ends, so no takeover can commit in between."""
    current = conn.execute(
        select(leadership.c.epoch).where(leadership.c.name == role).with_for_update(read=True)
    ).scalar_one_or_none()
    if current != epoch:
        raise Deposed(f"epoch {epoch} no longer leads {role} (the store says {current})")


def leader_url(conn: Connection, now_ms: int, role: str = SCHEDULER) -> str | None:
    """The advertised URL of the replica whose lease on ``role`` is live; None when there
    is none, or it advertises no URL."""
    row = conn.execute(
        select(leadership.c.url, leadership.c.expires_ms).where(leadership.c.name == role)
    ).first()
    if row is None or row.expires_ms < now_ms or not row.url:
        return None
    return str(row.url)


def settings_check(secret: str, sealing_key: str, readable: Iterable[str] = ()) -> str:
    """A fingerprint of what the replicas of one exchange must agree on: the secret that
    signs container tokens (a token signed by one replica is refused by another), the key
    that seals new secrets (``SecretBox.current``, itself a fingerprint) and the keys it can
    open (``SecretBox.key_ids``). It reveals none of them."""
    signed = hmac.new(secret.encode(), b"crucible replica settings", hashlib.sha256)
    keys = ",".join(sorted({k[:16] for k in readable} | {sealing_key[:16]}))
    return f"{signed.hexdigest()[:16]}:{sealing_key[:16]}:{keys}"


def compatible(a: str, b: str) -> bool:
    """Whether replicas with settings checks ``a`` and ``b`` may run together: the same
    token secret, and each opens what the other seals (a rotation of the secrets key done
    replica by replica: first the new key after the old on every one, then first). A check
    of an older version (no key list) opens its sealing key only."""

    def parts(check: str) -> tuple[str, str, set[str]]:
        signed, _, rest = check.partition(":")
        seal, _, keys = rest.partition(":")
        return signed, seal, set(keys.split(",")) if keys else {seal}

    (sa, ka, ra), (sb, kb, rb) = parts(a), parts(b)
    return sa == sb and ka in rb and kb in ra


def differing_replicas(
    conn: Connection, me: str, check: str, now_ms: int, lease_ms: int
) -> list[str]:
    """Other replicas alive within ``lease_ms`` whose settings check is not compatible with
    ``check``."""
    rows = conn.execute(
        select(replicas.c.id, replicas.c.settings_check).where(
            replicas.c.id != me,
            replicas.c.seen_ms >= now_ms - lease_ms,
            replicas.c.settings_check != "",
            replicas.c.settings_check != check,
        )
    ).all()
    return [r.id for r in rows if not compatible(check, r.settings_check)]


def check_in(conn: Connection, me: str, check: str, now_ms: int, lease_ms: int) -> list[str]:
    """A server about to start as replica ``me``: the live replicas whose settings check is
    not ``check`` (it must not start if there are any). Servers check in one at a time (an
    advisory lock on PostgreSQL), and one let through writes its replica row now, for the
    next one to find: two servers started at once with different settings would otherwise
    each find no other replica, and both run. The row is the one its elector renews (under
    the same name), so the server never counts itself as another replica, and its graceful
    stop deletes it."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _STARTING_LOCK})
    differing = differing_replicas(conn, me, check, now_ms, lease_ms)
    if not differing:
        conn.execute(insert(replicas).values(id=me, url="", seen_ms=now_ms, settings_check=check))
    return differing


def others_alive(
    conn: Connection, me: str, url: str, now_ms: int, lease_ms: int, check: str = ""
) -> int:
    """Renew this replica's row; returns how many other replicas renewed theirs within
    ``lease_ms``. Long-dead rows are deleted on the way."""
    found = conn.execute(
        update(replicas)
        .where(replicas.c.id == me)
        .values(url=url, seen_ms=now_ms, settings_check=check)
    ).rowcount
    if not found:
        conn.execute(insert(replicas).values(id=me, url=url, seen_ms=now_ms, settings_check=check))
    conn.execute(delete(replicas).where(replicas.c.seen_ms < now_ms - _FORGET_MS))
    return int(
        conn.execute(
            select(func.count())
            .select_from(replicas)
            .where(replicas.c.id != me, replicas.c.seen_ms >= now_ms - lease_ms)
        ).scalar_one()
    )


class Leader(Protocol):
    """What the elector starts on election and stops when deposed (the scheduler loop)."""

    def start(self, epoch: int) -> None: ...

    async def stop(self) -> None: ...

    @property
    def running(self) -> bool: ...


class Elector:
    """Claims the scheduler lease every ``renew_s`` and runs ``leader`` while it holds it.

    A failed claim (the store away) keeps a running leader: its own writes are fenced, so it
    can do no harm, and it goes as soon as a claim answers that someone else leads."""

    def __init__(
        self,
        engine: Engine,
        leader: Leader,
        now_ms: Callable[[], int],
        *,
        lease_s: float,
        renew_s: float,
        holder: str | None = None,
        url: str = "",
        check: str = "",
    ) -> None:
        self.engine = engine
        self.url = url.rstrip("/")
        # settings_check of this replica; replicas that differ are logged (once per set).
        self.check = check
        self.differing: list[str] = []
        self.leader = leader
        self.now_ms = now_ms
        self.lease_ms = max(1, round(lease_s * 1000))
        self.renew_s = renew_s
        self.holder = holder or new_replica_id()
        self.epoch: int | None = None
        # Other replicas alive as of the last claim (None: not known yet), and who wants to
        # hear of changes (the wake-up bus publishes only when there are some).
        self.others: int | None = None
        self.on_others: Callable[[int], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="elector")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        if self.leader.running:
            await self.leader.stop()
        # Hand the lease over now rather than after it lapses: a graceful stop (a rolling
        # restart) costs the fleet no scheduling pause. The replica's row goes too.
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._release, self.epoch)
        self.epoch = None

    def _claim(self) -> tuple[int | None, int]:
        now = self.now_ms()
        with self.engine.begin() as conn:
            others = others_alive(conn, self.holder, self.url, now, self.lease_ms, self.check)
            differing = (
                differing_replicas(conn, self.holder, self.check, now, self.lease_ms)
                if others and self.check
                else []
            )
        if differing != self.differing:
            self.differing = differing
            if differing:
                log.error(
                    "replica(s) %s run with another CRUCIBLE_SECRET or CRUCIBLE_SECRETS_KEYS "
                    "than this one: containers placed by one are refused by the other (their "
                    "calls fail with 'the container token's signature is wrong'). Give every "
                    "replica the same values (docs/operators.md, Running replicas)",
                    ", ".join(differing),
                )
        with self.engine.begin() as conn:
            return claim(conn, self.holder, now, self.lease_ms, url=self.url), others

    def _release(self, epoch: int | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(replicas).where(replicas.c.id == self.holder))
            if epoch is None:
                return
            conn.execute(
                update(leadership)
                .where(
                    leadership.c.name == SCHEDULER,
                    leadership.c.holder == self.holder,
                    leadership.c.epoch == epoch,
                )
                .values(expires_ms=0)
            )

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                epoch, others = await asyncio.to_thread(self._claim)
            except Exception:
                log.warning("could not claim the scheduler lease; trying again", exc_info=True)
            else:
                if others != self.others:
                    self.others = others
                    if self.on_others is not None:
                        self.on_others(others)
                await self._apply(epoch)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.renew_s)

    async def _apply(self, epoch: int | None) -> None:
        if epoch is not None and epoch == self.epoch and self.leader.running:
            return
        if self.leader.running:
            await self.leader.stop()
        if epoch is None:
            if self.epoch is not None:
                log.warning("replica %s is no longer the scheduler leader", self.holder)
            self.epoch = None
            return
        if epoch != self.epoch:
            log.info("replica %s leads the scheduler (epoch %d)", self.holder, epoch)
        self.epoch = epoch
        self.leader.start(epoch)
