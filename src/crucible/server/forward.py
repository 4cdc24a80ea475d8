"""What only the scheduler leader may decide, sent to it by the other replicas.

A reservation is decided on the market held in memory; with replicas only the leader's is
the market of record (the others' copies are re-read from the store when stale). A replica
that does not lead forwards ``POST /v1/reservations`` to the leader's advertised URL
(CRUCIBLE_ADVERTISE_URL, kept in the lease row) with the caller's own token, and answers
with the leader's answer. Without advertised URLs every replica decides for itself (the
limit docs/operators.md states).
"""

from __future__ import annotations

import time

from crucible.errors import ServerUnavailableError
from crucible.protocol.market import ReservationInfo, ReserveCreate
from crucible.protocol.transport import Transport
from crucible.server.leadership import leader_url
from crucible.server.state import ServerState

__all__ = ["to_leader"]

_TIMEOUT_S = 30.0
# How long a replica keeps asking for the leader while it changes (a SIGKILLed leader's lease
# is taken over in about 5 s: CRUCIBLE_LEADER_RENEW_S and its lease), and how often.
_FAILOVER_S = 12.0
_RETRY_S = 0.5


def to_leader(
    state: ServerState, authorization: str | None, req: ReserveCreate, key: str | None = None
) -> ReservationInfo | None:
    """The leader's answer to ``req`` when another replica leads; None when this replica
    should decide (it leads, or no leader advertises a URL). A leader that does not answer
    (it died: another replica takes its lease within seconds) is asked again, the new one
    once it holds the lease, for :data:`_FAILOVER_S`; the caller's key keeps a reservation
    the dead one may have made from being made twice. Blocking: call it from a worker
    thread (a sync route)."""
    own = state.settings.advertise_url.rstrip("/")
    if not own or not authorization:
        return None
    token = authorization.split(" ", 1)[-1].strip()
    deadline = time.monotonic() + _FAILOVER_S
    while True:
        if state.market.leading:
            return None
        with state.engine.connect() as conn:
            url = leader_url(conn, state.clock.now_ms())
        if url is None or url == own:
            return None
        transport = Transport(url, token, timeout_s=_TIMEOUT_S, retry_for_s=0)
        try:
            # The caller's Idempotency-Key goes with it: the leader keeps the answer under it.
            got = transport.post(
                "/v1/reservations", req.model_dump(mode="json"), idempotency_key=key
            )
        except ServerUnavailableError:
            if time.monotonic() >= deadline:
                raise ServerUnavailableError(
                    "the scheduler leader, which decides reservations, did not answer (it may "
                    "be changing); try again in a few seconds"
                ) from None
            time.sleep(_RETRY_S)
            continue
        finally:
            transport.close()
        return ReservationInfo.model_validate(got)
