"""The access relay's in-process state: sessions waiting for their agent, and live ones.

A client's WebSocket (exec, a tunnel, SSH) waits here until the container's agent dials back
for it (``/v1/hosts/{host}/access/{session}``); the agent's route then hands its own
WebSocket over and both are spliced by :mod:`crucible.server.api.access`. The agent learns of
a waiting session from its sync reply (:meth:`AccessRelay.take_requests`), woken through
``host:<host_id>``.

Sessions live in the process that accepted the client. With several replicas, each sets
CRUCIBLE_ADVERTISE_URL: the request then goes to the agent through the store
(services/access_handoff.py), whichever replica its syncs reach, and names this replica's URL
for the dial-back. Without it, the agent must reach the same replica as the client.
Limits: at most ``max_per_account`` sessions per account at once, waiting or live.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from crucible.errors import NotFoundError, RateLimitedError
from crucible.protocol.access import AccessRequest

__all__ = ["AccessRelay", "AccessSession", "until_first_ends"]


@dataclass
class AccessSession:
    id: str
    account_id: str
    host_id: str
    request: AccessRequest
    # Set to the agent's WebSocket when it dials back.
    agent: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    # Set when the splice is over: the agent's route returns (closing its socket) then.
    done: asyncio.Event = field(default_factory=asyncio.Event)
    delivered: bool = False  # handed to the agent in a sync reply
    ended_by_container: bool = False  # its container stopped


class AccessRelay:
    """Sessions by id; one event loop uses it (the server's)."""

    def __init__(self) -> None:
        self._sessions: dict[str, AccessSession] = {}

    def open(
        self,
        account_id: str,
        host_id: str,
        request: AccessRequest,
        *,
        max_per_account: int,
    ) -> AccessSession:
        """A new waiting session. Raises :class:`RateLimitedError` when the account already
        has ``max_per_account`` sessions."""
        held = sum(1 for s in self._sessions.values() if s.account_id == account_id)
        if held >= max_per_account:
            raise RateLimitedError(
                f"your account already has {held} open access sessions (exec, tunnels, SSH), "
                f"the most allowed (CRUCIBLE_ACCESS_MAX_SESSIONS={max_per_account}); close "
                "some and try again"
            )
        session = AccessSession(
            id=request.session_id, account_id=account_id, host_id=host_id, request=request
        )
        self._sessions[session.id] = session
        return session

    @staticmethod
    def new_id() -> str:
        return "acc-" + secrets.token_urlsafe(18)

    def take_requests(self, host_id: str) -> list[AccessRequest]:
        """Requests of ``host_id`` not yet handed to its agent; each is handed over once."""
        out = []
        for s in self._sessions.values():
            if s.host_id == host_id and not s.delivered and not s.agent.done():
                s.delivered = True
                out.append(s.request)
        return out

    def pending_for(self, host_id: str) -> bool:
        return any(
            s.host_id == host_id and not s.delivered and not s.agent.done()
            for s in self._sessions.values()
        )

    def attach(self, host_id: str, session_id: str, websocket: Any) -> AccessSession:
        """The agent of ``host_id`` dialled back for ``session_id``. Raises
        :class:`NotFoundError` for a session that is not this host's or not waiting."""
        s = self._sessions.get(session_id)
        if s is None or s.host_id != host_id or s.agent.done():
            raise NotFoundError(f"no access session {session_id!r} waiting for this host")
        s.agent.set_result(websocket)
        return s

    def close(self, session_id: str) -> None:
        s = self._sessions.pop(session_id, None)
        if s is not None:
            if not s.agent.done():
                s.agent.cancel()
            s.done.set()

    def count(self, account_id: str | None = None) -> int:
        return sum(
            1 for s in self._sessions.values() if account_id is None or s.account_id == account_id
        )

    def end_container(self, container_id: str) -> int:
        """End every session of a container that stopped; returns how many."""
        ended = [s for s in self._sessions.values() if s.request.container_id == container_id]
        for s in ended:
            s.ended_by_container = True
            self.close(s.id)
        return len(ended)


async def until_first_ends(*steps: Awaitable[Any]) -> None:
    """Run ``steps`` (a session's pumps, and its ``done`` event) until the first of them
    ends, then cancel the others and wait for them: how every relayed session is spliced."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
